"""`python scripts/gpu_report.py OUT`: gather what scripts/gpu_check.sh left in OUT into OUT/gpu_check.json
(and print a short summary): the machine, each part's status, the tests' counts, the three-stage
run's timings, accuracy and peak memory, and the benchmark's rows."""
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


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


def stage_figures(out: Path) -> dict | None:
    run = out / "run"
    supernet, search = read_json(run / "supernet" / "summary.json"), read_json(run / "search" / "summary.json")
    results = read_json(run / "retrain" / "results.json")
    walls = {r["stage"]: r["wall_ms"] / 1000 for r in read_jsonl(out / "stage_walls.jsonl")}
    if not (supernet or search or results):
        return None
    figures = {"wall_s": walls}
    if supernet:
        figures["supernet"] = dict(epochs=supernet["epochs"], s_per_epoch=supernet["train_seconds"] / supernet["epochs"],
                                   peak_memory_mb=supernet.get("peak_memory_mb"))
    if search:
        figures["search"] = dict(candidates=search["candidates_scored"],
                                 s_per_candidate=search["search_seconds"] / max(search["candidates_scored"], 1),
                                 best_val_acc1=search["best_val_acc1"], best_params=search["best_params"],
                                 peak_memory_mb=search.get("peak_memory_mb"))
    if results:
        t = results["timings"]
        figures["retrain"] = dict(epochs=results["epochs"], s_per_epoch=t["retrain_train_s"] / max(results["epochs"], 1),
                                  test_acc=results["test_acc"], test_acc_merged=results["test_acc_merged"],
                                  test_eval_s=t["test_eval_s"], test_eval_merged_s=t["test_eval_merged_s"],
                                  adapter_params=results["adapter_params"], peak_memory_mb=results.get("peak_memory_mb"))
    return figures


def main(out: Path) -> int:
    if not out.is_dir():
        print(f"error: {out}: no such folder (run scripts/gpu_check.sh first)", file=sys.stderr)
        return 2
    parts = read_jsonl(out / "parts.jsonl")
    bench = read_json(out / "bench.json")
    report = dict(machine=machine(), parts=parts,
                  tests={name: test_counts(out / f"{name}.xml") for name in ("tests_cuda", "tests_rest")},
                  stages=stage_figures(out), bench=bench)
    path = out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check on {report['machine']['device']} (torch {report['machine']['torch']}):")
    for p in parts:
        print(f"  {p['part']}: {p['status']} in {p['seconds']} s")
    for name, counts in report["tests"].items():
        if counts:
            print(f"  {name}: {counts['passed']} passed, {counts['failed'] + counts['errors']} failed, "
                  f"{counts['skipped']} skipped" + "".join(f"\n    FAILED {f}" for f in counts["failing"]))
    print(f"figures written to {path}")
    return 0 if parts and all(p["status"] == "ok" for p in parts) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python scripts/gpu_report.py OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
