"""scripts/gpu_check.sh, the GPU run-book, where no GPU is needed: its syntax, its argument handling,
and (with --smoke, on the CPU) the three-stage part and the JSON report it writes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def gpu_check(*args):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env)


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = gpu_check("--help")
    assert r.returncode == 0 and "Usage: bash scripts/gpu_check.sh" in r.stdout and "--smoke" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--tests", "some"], "--tests some: use all, cuda or none"),
    (["--skip", "tests"], "--skip tests: the parts that can be skipped are stages and bench"),
    (["--seconds", "5"], "--seconds 5"),
    (["--out"], "--out needs a folder"),
])
def test_bad_arguments_are_one_line_and_status_2(args, needle):
    r = gpu_check(*args)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_it_says_so(tmp_path):
    r = gpu_check("--out", tmp_path / "out")
    assert r.returncode == 2 and "no CUDA GPU is visible" in r.stderr
    assert not (tmp_path / "out").exists()


def test_report_of_a_missing_folder(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"), str(tmp_path / "nothing")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "run scripts/gpu_check.sh first" in r.stderr


@pytest.mark.slow
def test_smoke_run_writes_the_stage_figures(tmp_path):
    r = gpu_check("--smoke", "--tests", "none", "--skip", "bench", "--out", tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(p["part"], p["status"]) for p in report["parts"]] == [("stages", "ok")]
    stages = report["stages"]
    assert set(stages["wall_s"]) == {"train", "search", "retrain"}
    assert stages["supernet"]["epochs"] == 1 and stages["search"]["candidates"] == 4
    assert stages["retrain"]["test_acc"] == stages["retrain"]["test_acc_merged"]
    assert report["machine"]["torch"] == torch.__version__
