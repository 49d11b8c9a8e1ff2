"""The package: `glora` alone in the wheel, importing only what the method needs; README's library example runs."""
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
def test_readme_library_example_runs(tmp_path):
    """README's "Using the library" on a ConvNeXt: it checks merged == unmerged and reloads the Hub folder itself."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Using the library.*?```python\n(.*?)```", readme, re.S).group(1)
    assert "merge_glora" in code and "assert_close" in code
    python(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code, cwd=tmp_path)
    assert (tmp_path / "glora-convnext" / "model.safetensors").is_file()
