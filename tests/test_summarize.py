"""scripts/summarize.py: per-task mean ± std over seeds, VTAB group means and both overall means, by hand."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import summarize  # noqa: E402


def write_run(run: Path, task: str, acc: float, params: int = 1000, **fields) -> None:
    (run / "retrain").mkdir(parents=True)
    (run / "retrain" / "results.json").write_text(json.dumps(
        {"task": task, "test_acc": acc, "test_acc_merged": acc, "trainable_params": params + 100,
         "adapter_params": params, "head_params": 100, **fields}))


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize.py"), *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture
def grid(tmp_path):
    """Four VTAB tasks (two natural, one specialized, one structured) and one of our own, 1-2 seeds each."""
    g = tmp_path / "grid"
    for task, accs in {"cifar": [70.0, 74.0], "dtd": [60.0, 64.0], "eurosat": [90.0, 92.0], "kitti": [80.0],
                       "mine": [50.0]}.items():
        for seed, acc in enumerate(accs):
            write_run(g / task / f"seed{seed}", task, acc, params=1000 + 100 * seed)
    return g


def test_grid_table_matches_hand_computed_means(grid):
    md, files = summarize.write_summary(grid)
    assert (grid / "results.md").read_text() == md
    assert [f.name for f in files] == ["results.md", "results.csv", "results_groups.csv", "results_published.csv",
                                       "results_runs.csv", "accuracy_per_task.png",
                                       "accuracy_vs_params.png"]
    expected = (
        # per task: mean ± sample std over seeds (stdev of 70, 74 is 2·√2 = 2.83), n, mean parameters
        "| task | group | n | test_acc | test_acc_merged | trainable_params | adapter_params | head_params |",
        "| cifar | natural | 2 | 72.00 ± 2.83 | 72.00 ± 2.83 | 1150 | 1050 | 100 |",
        "| dtd | natural | 2 | 62.00 ± 2.83 |",
        "| eurosat | specialized | 2 | 91.00 ± 1.41 |",
        "| kitti | structured | 1 | 80.00 | 80.00 | 1100 | 1000 | 100 |",
        "| mine | own | 1 | 50.00 |",
        # groups: natural (72+62)/2, specialized 91, structured 80; tasks (72+62+91+80)/4; groups (67+91+80)/3
        "| natural | 2/7 | 67.00 |",
        "| specialized | 1/4 | 91.00 |",
        "| structured | 1/8 | 80.00 |",
        "| mean of tasks | 4/19 | 76.25 |",
        "| mean of group means | 4/19 | 79.33 |",
        "mine: group own) are not in the VTAB-1k group or overall means",
        "mean ± sample standard deviation over the n runs",
    )
    for line in expected:
        assert line in md, line

    rows = {r["task"]: r for r in csv.DictReader((grid / "results.csv").open())}
    assert float(rows["cifar"]["test_acc"]) == 72.0 and rows["cifar"]["n"] == "2"
    assert float(rows["cifar"]["test_acc_std"]) == pytest.approx(2 * 2 ** 0.5)
    assert rows["kitti"]["test_acc_std"] == ""
    means = {r["mean"]: float(r["test_acc"]) for r in csv.DictReader((grid / "results_groups.csv").open())}
    assert means == pytest.approx({"natural": 67.0, "specialized": 91.0, "structured": 80.0,
                                   "mean of tasks": 76.25, "mean of group means": 79 + 1 / 3})


def test_config_axis_gets_its_own_rows_and_means(tmp_path):
    g = tmp_path / "grid"
    for config, accs in {"glora": [70.0, 72.0], "lora": [60.0, 66.0]}.items():
        for seed, acc in enumerate(accs):
            write_run(g / config / "cifar" / f"seed{seed}", "cifar", acc)
        write_run(g / config / "eurosat" / "seed0", "eurosat", accs[0] + 20)
    md = summarize.write_summary(g)[0]
    assert {r["method"] for r in summarize.figure_rows(summarize.collect(g))} == {"glora", "lora"}
    assert "| glora | cifar | natural | 2 | 71.00 ± 1.41 |" in md
    assert "| lora | cifar | natural | 2 | 63.00 ± 4.24 |" in md
    assert "| glora | mean of tasks | 2/19 | 80.50 |" in md  # (71 + 90) / 2
    assert "| lora | mean of group means | 2/19 | 71.50 |" in md  # (63 + 80) / 2


def test_single_run_and_folder_of_runs_keep_the_per_run_table(tmp_path):
    run = tmp_path / "demo"
    write_run(run, "digits", 85.7, params=22208)
    r = cli(run)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "| task | group | test_acc | test_acc_merged | trainable_params | adapter_params | head_params |\n"
        "|---|---|---|---|---|---|---|\n"
        "| digits | own | 85.70 | 85.70 | 22308 | 22208 | 100 |\n")
    assert "group means" not in r.stdout  # no VTAB task: no VTAB means

    vtab = tmp_path / "vtab"  # scripts/vtab.sh's layout: outputs/vtab/<task>/
    write_run(vtab / "dtd", "dtd", 60.0)
    write_run(vtab / "cifar", "cifar", 70.0)
    md = summarize.write_summary(vtab)[0]
    assert "| cifar | natural | 70.00 | 70.00 | 1100 | 1000 | 100 |" in md  # registry order: cifar before dtd
    assert "| dtd | natural | 60.00 | 60.00 | 1100 | 1000 | 100 |" in md
    assert md.index("| cifar |") < md.index("| dtd |")
    assert "| mean of group means | 2/19 | 65.00 |" in md


def test_methods_get_their_rows_by_folder_or_by_the_method_in_their_results(tmp_path):
    vtab = tmp_path / "vtab"  # vtab.sh TASK: outputs/vtab/<task>/; vtab.sh TASK --method NAME: outputs/vtab/NAME/<task>/
    write_run(vtab / "dtd", "dtd", 60.0, method="glora")
    write_run(vtab / "linear" / "dtd", "dtd", 40.0, params=0, method="linear", test_acc_merged=None)
    write_run(vtab / "bitfit" / "dtd", "dtd", 50.0, params=0, method="bitfit", test_acc_merged=None,
              trainable_params=300)
    md = summarize.write_summary(vtab)[0]
    assert "| config | task | group | test_acc | test_acc_merged | trainable_params | adapter_params | head_params |" in md
    assert "| bitfit | dtd | natural | 50.00 | – | 300 | 0 | 100 |" in md  # no merge applies: –
    assert "| glora | dtd | natural | 60.00 | 60.00 | 1100 | 1000 | 100 |" in md
    assert "| linear | dtd | natural | 40.00 | – | 100 | 0 | 100 |" in md
    assert "| linear | mean of group means | 1/19 | 40.00 |" in md
    assert {(r["method"], r["params"]) for r in summarize.figure_rows(summarize.collect(vtab))} == {
        ("glora", 1100), ("linear", 100), ("bitfit", 300)}


def test_no_results_is_one_error_line(tmp_path):
    r = cli(tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: no finished run (retrain/results.json) under") and len(r.stderr.splitlines()) == 1


def test_runs_left_out_are_named_and_the_rest_is_printed(tmp_path):
    """A damaged results.json, a retrain killed after its results.json (its run record not finished),
    a run stopped in its search, and a run a launcher found stale are left out, each named."""
    g = tmp_path / "grid"
    write_run(g / "dtd" / "seed0", "dtd", 60.0)
    (g / "dtd" / "seed0" / "retrain" / "run.yaml").write_text("run: a\nfinished: '2026-01-01 00:00:00'\n")
    write_run(g / "dtd" / "seed1", "dtd", 62.0)
    (g / "dtd" / "seed1" / "retrain" / "results.json").write_text('{"task": "dtd", "test_acc": ')  # cut short
    write_run(g / "dtd" / "seed2", "dtd", 99.0)
    (g / "dtd" / "seed2" / "retrain" / "run.yaml").write_text("run: b\n")  # killed before its Hub folder
    for stage in ("supernet", "search"):
        (g / "dtd" / "seed3" / stage).mkdir(parents=True)
        (g / "dtd" / "seed3" / stage / "run.yaml").write_text("run: c\n" + "finished: x\n" * (stage == "supernet"))
    write_run(g / "dtd" / "seed4", "dtd", 10.0, test_acc="high")
    write_run(g / "dtd" / "seed5", "dtd", 30.0)
    (g / "supernet").mkdir()  # a supernet of its own (a budget sweep's) is not a run of the table
    (g / "supernet" / "run.yaml").write_text("run: d\nfinished: x\n")

    md, _ = summarize.write_summary(g, {g / "dtd" / "seed5": "settings changed since it ran"})
    assert "| dtd | natural | 60.00 | 60.00 |" in md  # seed0 alone
    assert md.endswith(
        "Left out (5 runs):\n"
        "- dtd/seed1: dtd/seed1/retrain/results.json is damaged (Expecting value: line 1 column 29 (char 28)); "
        "run its retrain again\n"
        "- dtd/seed2: unfinished (its retrain stopped, failed or still running; no finished retrain)\n"
        "- dtd/seed3: unfinished (its search stopped, failed or still running; no finished retrain)\n"
        "- dtd/seed4: dtd/seed4/retrain/results.json is damaged (test_acc is 'high', not a number); run its retrain "
        "again\n"
        "- dtd/seed5: settings changed since it ran\n")
    r = cli(g)
    assert r.returncode == 0 and "| dtd | natural | 2 | 45.00 ± 21.21 |" in r.stdout  # seeds 0 and 5
    assert "Left out (4 runs):\n- dtd/seed1: " in r.stdout
