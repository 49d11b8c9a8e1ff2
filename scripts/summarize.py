"""Collect `retrain/results.json` files under a folder into a results table (Markdown + CSV).

Per task: test accuracy (unmerged and merged), adapter and head parameters; then the mean of
each VTAB-1k group (natural, specialized, structured) and the mean of the three group means;
figures of accuracy per task per method and of accuracy against trainable parameters.
Usage: python scripts/summarize.py OUTPUTS [--baseline linear_probe]
"""
import argparse
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.registry import GROUPS, get_task  # noqa: E402
from engine.figures import draw_summary  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


def collect(folder: Path, baseline: str | None) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("**/retrain/results.json")):
        r = json.loads(path.read_text())
        task = get_task(r["task"])
        row = {
            "task": r["task"], "group": task.group if task else "own",
            "test_acc": r["test_acc"], "test_acc_merged": r["test_acc_merged"],
            "adapter_params": r["adapter_params"], "head_params": r["head_params"],
            "run": str(path.parent.parent),
        }
        if baseline:
            b = path.parent.parent / baseline / "results.json"
            row[f"{baseline}_acc"] = json.loads(b.read_text())["test_acc"] if b.is_file() else None
        rows.append(row)
    return rows


def figure_rows(rows: list[dict], baseline: str | None) -> list[dict]:
    """One row per run and method (task, method, test_acc, params: trainable parameters) for the figures."""
    out = [{"task": r["task"], "method": "GLoRA", "test_acc": r["test_acc"],
            "params": r["adapter_params"] + r["head_params"]} for r in rows]
    for r in rows if baseline else ():
        b = Path(r["run"]) / baseline / "results.json"
        if b.is_file():
            res = json.loads(b.read_text())
            out.append({"task": r["task"], "method": baseline, "test_acc": res["test_acc"],
                        "params": res["trainable_params"]})
    return out


def group_means(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Mean test accuracy of each group over the tasks present, with how many there were."""
    means = {}
    for group, tasks in GROUPS.items():
        accs = [r["test_acc"] for r in rows if r["task"] in tasks]
        if accs:
            means[group] = (sum(accs) / len(accs), len(accs))
    return means


def fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], means: dict) -> str:
    cols = [c for c in rows[0] if c != "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    if means:
        lines += ["", "| group | tasks | mean test_acc |", "|---|---|---|"]
        lines += [f"| {g} | {n}/{len(GROUPS[g])} | {m:.2f} |" for g, (m, n) in means.items()]
        overall = sum(m for m, _ in means.values()) / len(means)
        lines.append(f"| mean of group means | {sum(n for _, n in means.values())}/19 | {overall:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a run's output folder, or a folder of runs")
    p.add_argument("--baseline", default=None, help="a sibling stage folder to show, e.g. linear_probe")
    args = p.parse_args()
    rows = collect(args.folder, args.baseline)
    if not rows:
        print(f"error: no retrain/results.json under {args.folder}; run retrain.py first", file=sys.stderr)
        return 2
    text = markdown(rows, group_means(rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (args.folder / "results.md").write_text(text)
    (args.folder / "results.csv").write_text(buf.getvalue())
    with SummaryWriter(str(args.folder / "tb_summary"), purge_step=0) as tb:
        figures = draw_summary(args.folder, figure_rows(rows, args.baseline), tb)
    print(text, end="")
    print(f"(written to {args.folder / 'results.md'}, results.csv, {', '.join(f.name for f in figures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
