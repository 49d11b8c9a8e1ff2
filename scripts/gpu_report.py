"""`python scripts/gpu_report.py OUT`: gather what scripts/gpu_check.sh left in OUT into OUT/gpu_check.json
(and print a summary): the machine, each part's status, the tests' counts, the three-stage runs
(eager and compiled: timings, accuracy, peak memory, and one whole VTAB-1k task with the release's
schedule projected from their measured epochs), the benchmark's rows and the compiled step's targets."""
import json
import platform
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASK_TARGET_S = 300  # one whole VTAB-1k task on one H100: the goal behind all 19 in about an hour


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def test_counts(path: Path) -> dict | None:
    """passed/failed/errors/skipped of a pytest --junitxml file."""
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return dict(passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"], failed=n["failures"],
                errors=n["errors"], skipped=n["skipped"], seconds=float(suite.get("time", 0)), failing=failed)


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return dict(device=torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
                gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
                torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version())


def steady(seconds: list) -> float | None:
    """The steady state of a list of per-epoch (or per-validation) seconds: the median after the first,
    which compiles (the only one if there is one)."""
    if not seconds:
        return None
    return statistics.median(seconds[1:] or seconds)


def stage_figures(run: Path, walls: dict) -> dict | None:
    supernet, search = read_json(run / "supernet" / "summary.json"), read_json(run / "search" / "summary.json")
    results = read_json(run / "retrain" / "results.json")
    if not (supernet or search or results):
        return None
    figures = {"wall_s": walls}
    if supernet:
        figures["supernet"] = dict(epochs=supernet["epochs"], epoch_s=supernet.get("epoch_seconds"),
                                   validation_s=supernet.get("validation_seconds"),
                                   s_per_epoch=steady(supernet.get("epoch_seconds")),
                                   peak_memory_mb=supernet.get("peak_memory_mb"), compile=supernet.get("compile"))
    if search:
        figures["search"] = dict(candidates=search["candidates_scored"],
                                 s_per_candidate=search["search_seconds"] / max(search["candidates_scored"], 1),
                                 best_val_acc1=search["best_val_acc1"], best_params=search["best_params"],
                                 peak_memory_mb=search.get("peak_memory_mb"))
    if results:
        t = results["timings"]
        figures["retrain"] = dict(epochs=results["epochs"], epoch_s=t.get("retrain_epoch_s"),
                                  s_per_epoch=steady(t.get("retrain_epoch_s")) or t["retrain_train_s"] / max(results["epochs"], 1),
                                  test_acc=results["test_acc"], test_acc_merged=results["test_acc_merged"],
                                  test_eval_s=t["test_eval_s"], test_eval_merged_s=t["test_eval_merged_s"],
                                  adapter_params=results["adapter_params"], peak_memory_mb=results.get("peak_memory_mb"),
                                  compile=results.get("compile"))
    return figures


def project(figures: dict, config: dict, test_images: int) -> dict | None:
    """One whole VTAB-1k task with the release's schedule (configs/defaults.yaml) from a short run's
    figures: each stage's measured wall time, plus the epochs, validations and candidates the
    release runs beyond those measured, at their steady-state cost (compiling and start-up are
    measured once, as they occur once); the test evaluations scaled to a VTAB-1k task's mean test split."""
    from data.registry import TASKS as VTAB_TASKS

    from engine.config import load_config

    if not all(k in figures for k in ("supernet", "search", "retrain")):
        return None
    release = load_config()
    t, s, r = release["train"], release["search"], release["retrain"]
    sup, sea, ret, walls = figures["supernet"], figures["search"], figures["retrain"], figures["wall_s"]
    if not (sup["epoch_s"] and ret["epoch_s"]) or set(walls) != {"train", "search", "retrain"}:
        return None
    val_per_subnet = steady(sup["validation_s"]) / config["train"]["eval_subnets"] if sup["validation_s"] else 0.0
    validations = t["epochs"] // t["eval_every"] if t["eval_every"] else 1
    supernet = (walls["train"] + (t["epochs"] - len(sup["epoch_s"])) * sup["s_per_epoch"]
                + (validations * t["eval_subnets"] - len(sup["validation_s"] or []) * config["train"]["eval_subnets"])
                * val_per_subnet)
    candidates = s["generations"] * s["population"]
    search = walls["search"] + (candidates - sea["candidates"]) * sea["s_per_candidate"]
    mean_test = statistics.mean(task.test_size for task in VTAB_TASKS.values() if task.test_size)
    tests = (ret["test_eval_s"] + (ret["test_eval_merged_s"] or 0)) * (mean_test / test_images - 1)
    retrain = walls["retrain"] + (r["epochs"] - len(ret["epoch_s"])) * ret["s_per_epoch"] + tests
    return dict(supernet_s=supernet, search_s=search, retrain_s=retrain, total_s=supernet + search + retrain,
                schedule=f"{t['epochs']}-epoch supernet (validated every {t['eval_every']} on {t['eval_subnets']} "
                         f"subnets), {s['generations']} x {s['population']} search, {r['epochs']}-epoch retrain, "
                         f"tests of {mean_test:.0f} images (the VTAB-1k mean)")


def targets(bench: list | None, projections: dict) -> list[dict]:
    """The compiled step's targets, each with its figure and whether it is met (None: not measured)."""
    rows = {(r["name"], r["baseline"]): r for r in bench or [] if r.get("ratio") is not None}

    def ratio(name, baseline):
        return rows.get((name, baseline), {}).get("ratio")

    memory = [r for r in bench or [] if r.get("unit") == "MB" and r.get("ratio") is not None]
    checks = [
        ("compiled supernet step / compiled full fine-tuning step", ratio("supernet step, compiled",
                                                                           "full fine-tuning step, compiled"), 1.0),
        ("compiled supernet step / today's eager supernet step", ratio("supernet step, compiled",
                                                                        "supernet step, eager (today's)"), 1 / 3),
        ("compiled retrain step / compiled full fine-tuning step", ratio("retrain step, compiled",
                                                                          "full fine-tuning step, compiled"), 0.8),
        ("peak memory compiled / eager (worst method)", max((r["ratio"] for r in memory), default=None), 1.0),
    ]
    out = [dict(target=f"{what} <= {limit:.3g}", figure=value, met=None if value is None else value <= limit)
           for what, value, limit in checks]
    total = (projections.get("compiled") or {}).get("total_s")
    out.append(dict(target=f"one whole VTAB-1k task, compiled, <= {TASK_TARGET_S} s", figure=total,
                    met=None if total is None else total <= TASK_TARGET_S))
    return out


def main(out: Path) -> int:
    if not out.is_dir():
        print(f"error: {out}: no such folder (run scripts/gpu_check.sh first)", file=sys.stderr)
        return 2
    import yaml

    parts = read_jsonl(out / "parts.jsonl")
    bench = read_json(out / "bench.json")
    walls = read_jsonl(out / "stage_walls.jsonl")
    stages, projections = {}, {}
    for run in ("eager", "compiled"):
        figures = stage_figures(out / f"run_{run}", {w["stage"]: w["wall_ms"] / 1000 for w in walls if w["run"] == run})
        if figures:
            stages[run] = figures
            config = yaml.safe_load((out / f"stages_{run}.yaml").read_text())
            test_images = sum(1 for _ in (out / "data" / config["data"]["task"] / "test.txt").open())
            projections[run] = project(figures, config, test_images)
    report = dict(machine=machine(), parts=parts,
                  tests={name: test_counts(out / f"{name}.xml") for name in ("tests_cuda", "tests_rest")},
                  stages=stages or None, projection=projections or None, targets=targets(bench, projections),
                  bench=bench)
    path = out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check on {report['machine']['device']} (torch {report['machine']['torch']}):")
    for p in parts:
        print(f"  {p['part']}: {p['status']} in {p['seconds']} s")
    for name, counts in report["tests"].items():
        if counts:
            print(f"  {name}: {counts['passed']} passed, {counts['failed'] + counts['errors']} failed, "
                  f"{counts['skipped']} skipped" + "".join(f"\n    FAILED {f}" for f in counts["failing"]))
    for run, p in projections.items():
        if p:
            print(f"  one VTAB-1k task, {run}: {p['total_s']:.0f} s (supernet {p['supernet_s']:.0f}, search "
                  f"{p['search_s']:.0f}, retrain {p['retrain_s']:.0f}); {p['schedule']}")
    for t in report["targets"]:
        figure = "not measured" if t["figure"] is None else f"{t['figure']:.3g}"
        print(f"  target {t['target']}: {figure} ({ {True: 'met', False: 'MISSED', None: '-'}[t['met']] })")
    print(f"figures written to {path}")
    return 0 if parts and all(p["status"] == "ok" for p in parts) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python scripts/gpu_report.py OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
