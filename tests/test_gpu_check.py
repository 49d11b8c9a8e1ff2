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


def gpu_check(*args, **env):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": sys.executable, **env}
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
def test_smoke_run_writes_every_figure_and_the_projection(tmp_path):
    """Every Python part the run-book runs on a GPU, here on the CPU with a tiny ViT (the compiled
    parts traced with aot_eager, to keep it cheap): the bench's compiled section, the eager and the
    compiled three-stage runs, the projection of a whole task and the targets."""
    r = gpu_check("--smoke", "--tests", "none", "--seconds", 1600, "--out", tmp_path, GLORA_COMPILE_BACKEND="aot_eager")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(p["part"], p["status"]) for p in report["parts"]] == [("bench", "ok"), ("stages", "ok")]
    for run in ("eager", "compiled"):
        stages = report["stages"][run]
        assert set(stages["wall_s"]) == {"train", "search", "retrain"}
        assert len(stages["supernet"]["epoch_s"]) == 2 and stages["search"]["candidates"] == 4
        assert stages["retrain"]["test_acc"] == stages["retrain"]["test_acc_merged"]
        assert stages["supernet"]["compile"]["compiled"] == (run == "compiled")
        projection = report["projection"][run]
        assert projection["total_s"] == pytest.approx(projection["supernet_s"] + projection["search_s"]
                                                      + projection["retrain_s"])
        assert projection["supernet_s"] > 100 * stages["supernet"]["s_per_epoch"]  # 500 epochs, not 2
    compiled = report["stages"]["compiled"]["supernet"]["compile"]
    assert (compiled["recompilations"], compiled["graph_breaks"]) == (0, 0)
    names = {(r["name"], r["baseline"]) for r in report["bench"]}
    assert ("supernet step, compiled", "supernet step, eager") in names
    assert [t["met"] is not None for t in report["targets"]] == [False, True, False, True, True]
    assert "one VTAB-1k task, compiled:" in r.stdout and "target one whole VTAB-1k task" in r.stdout
    assert report["machine"]["torch"] == torch.__version__


def test_report_projects_the_release_schedule_from_measured_epochs(tmp_path):
    """A whole task: each stage's wall time, plus the epochs, validations and candidates the release
    runs beyond those measured, at their steady-state cost (the first epoch, which compiles, left out)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_report import project, targets

    figures = {"wall_s": {"train": 30.0, "search": 5.0, "retrain": 20.0},
               "supernet": {"epoch_s": [20.0, 1.0, 1.0], "validation_s": [5.0, 0.5, 0.5], "s_per_epoch": 1.0},
               "search": {"candidates": 20, "s_per_candidate": 0.05},
               "retrain": {"epoch_s": [15.0, 1.0, 1.0], "s_per_epoch": 1.0, "test_eval_s": 2.0, "test_eval_merged_s": 2.0}}
    config = {"train": {"eval_subnets": 2}}
    p = project(figures, config, test_images=5000)
    # 500 epochs (497 more at 1 s), 10 validations of 3 subnets (30 - 6 subnet evaluations more at 0.25 s)
    assert p["supernet_s"] == pytest.approx(30 + 497 + 24 * 0.25)
    assert p["search_s"] == pytest.approx(5 + 980 * 0.05)
    from data.registry import TASKS as VTAB_TASKS
    import statistics
    mean_test = statistics.mean(t.test_size for t in VTAB_TASKS.values() if t.test_size)
    assert p["retrain_s"] == pytest.approx(20 + 97 + 4.0 * (mean_test / 5000 - 1))
    met = targets([{"name": "supernet step, compiled", "baseline": "full fine-tuning step, compiled", "ratio": 0.9}],
                  {"compiled": p})
    assert [t["met"] for t in met] == [True, None, None, None, p["total_s"] <= 300]
