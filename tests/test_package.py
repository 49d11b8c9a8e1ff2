"""The package: `glora` alone in the wheel, importing only what the method needs; the library example
of docs/library.md runs."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ("data", "search", "engine", "bench", "train", "retrain", "scripts")  # never imported by glora


def python(code, cwd=ROOT, env=None):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_method_imports_torch_and_safetensors_only():
    loaded = python(
        "import sys, glora\n"
        "from glora import (SearchSpace, GLoRALinear, inject_glora, set_subnet, subnet_params, merge_glora,\n"
        "                   export_merged, save_adapters, load_adapters, get_family, attach)\n"
        "get_family('noah')  # the adapter families register on first use\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n").split()
    assert {"torch", "safetensors", "glora"} <= set(loaded)
    assert not {"timm", "yaml", "matplotlib", "huggingface_hub", *PIPELINE} & set(loaded)
    # the rest of the package (model building, Hub export, subnet files) adds timm and PyYAML, never the pipeline
    loaded = python("import sys, glora.model, glora.hub, glora.subnet, glora.io\n"
                    "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n").split()
    assert "timm" in loaded and not set(PIPELINE) & set(loaded)


def test_the_wheel_holds_glora_only(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "outputs", "runs", "datasets", "demo_data", "build", "dist", "*.egg-info",
                                                             "__pycache__", "*.safetensors", "*.npz", "*.pth", "*.pt"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("glora-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"glora", wheel.name.split("-py")[0] + ".dist-info"}
    assert {f"glora/{p.name}" for p in (ROOT / "glora").glob("*.py")} <= set(names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = {re.split(r"[<>=; ]", line[len("Requires-Dist: "):])[0].lower()
                for line in meta.splitlines() if line.startswith("Requires-Dist: ")}
    assert requires == {"torch", "safetensors", "timm", "pyyaml"}


@pytest.mark.slow
def test_the_library_example_runs_from_another_folder_and_writes_nothing_there(tmp_path):
    """docs/library.md's example on a ConvNeXt: it checks merged == unmerged and reloads the Hub folder
    itself; run outside the repository (glora found as `pip install -e .` makes it found), it leaves
    the working folder empty."""
    page = (ROOT / "docs" / "library.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert "merge_glora" in code and "assert_close" in code and "save_hub_folder" in code
    site, work = tmp_path / "site", tmp_path / "work"  # glora alone on the path, as `pip install -e .` maps it
    site.mkdir()
    work.mkdir()
    (site / "glora").symlink_to(ROOT / "glora")
    env = {**os.environ, "PYTHONPATH": str(site)}
    python(code + "\nimport importlib.util as u\nassert u.find_spec('engine') is None\n", cwd=work, env=env)
    assert list(work.iterdir()) == []


def test_ci_runs_readme_set_up_and_test_command():
    """CI (.ci/run) installs what README's set-up installs (the project itself too) and runs README's test command."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"## Set up and run the demo.*?```bash\n(.*?)```", readme, re.S).group(1)
    tests = re.search(r"## Run the tests.*?```bash\n(.*?)```", readme, re.S).group(1)
    assert "python3 -m venv .venv" in setup and "pip install -r requirements.txt -e ." in setup
    assert "python3 -m venv .venv" in ci and "pip install -q -r requirements-bench.txt -e ." in ci
    test_command = tests.strip().splitlines()[-1]
    assert test_command == "python -m pytest -q -n 2" and ci.rstrip().endswith(test_command)
    assert "-r requirements.txt" in (ROOT / "requirements-bench.txt").read_text()
