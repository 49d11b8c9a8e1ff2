"""Collect `retrain/results.json` files under a folder into a results table (Markdown + CSV).

FOLDER is one run, a folder of runs (outputs/vtab/[<method>/]<task>/), or a grid of scripts/launch.py
(<grid>/[<config>/]<task>/seed<k>/). A run's config is its folder below FOLDER without the task and
seed levels (the grid's config, the method of vtab.sh --method), else the method in its results.
Per (config,) task: test accuracy (unmerged and merged; – where no merge applies) as mean ± sample
std over its runs (seeds) and their number n; trainable (adapters, trained backbone parameters
and head), adapter and head parameters (means).
Per config: the mean of each VTAB-1k group (natural, specialized, structured), the mean of the
VTAB tasks and the mean of the three group means; tasks of one's own (group `own`) are in neither.
Writes results.md, results.csv (one row per task), results_groups.csv (the means) and two figures,
accuracy per task per config (method) and accuracy against trainable parameters, into FOLDER
(the figures also into TensorBoard under FOLDER/tb_summary).
Usage: python scripts/summarize.py FOLDER
"""
import argparse
import csv
import io
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.registry import GROUPS, TASKS, get_task  # noqa: E402
from engine.figures import draw_summary  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

SEED_DIR = re.compile(r"seed\d+")
LABELS = ("config", "task", "group", "run")
PARAMS = ("trainable_params", "adapter_params", "head_params")  # shown as means; every other value is an accuracy
ORDER = {name: i for i, name in enumerate(TASKS)}  # VTAB tasks in the registry's (the papers') order


def collect(folder: Path) -> list[dict]:
    """One row per run, i.e. per folder holding a retrain/results.json."""
    runs = []
    for path in sorted(folder.glob("**/retrain/results.json")):
        r = json.loads(path.read_text())
        run = path.parent.parent
        task = get_task(r["task"])
        row = {
            "config": config_label(folder, run, r["task"]) or r.get("method", ""), "task": r["task"],
            "group": task.group if task else "own", "test_acc": r["test_acc"], "test_acc_merged": r["test_acc_merged"],
            "trainable_params": r["trainable_params"], "adapter_params": r["adapter_params"],
            "head_params": r["head_params"], "run": str(run),
        }
        runs.append(row)
    return runs


def config_label(folder: Path, run: Path, task: str) -> str:
    """The run's folder below FOLDER without its `<task>/seed<k>` levels: the grid's config, or ''."""
    parts = list(run.relative_to(folder).parts)
    if parts and SEED_DIR.fullmatch(parts[-1]):
        parts.pop()
    if parts and parts[-1] == task:
        parts.pop()
    return "/".join(parts)


def figure_rows(runs: list[dict]) -> list[dict]:
    """One row per run (task, method: the config or GLoRA, test_acc, params: trainable) for the figures."""
    return [{"task": r["task"], "method": r["config"] or "GLoRA", "test_acc": r["test_acc"],
             "params": r["trainable_params"]} for r in runs]


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (config, task): n runs, each accuracy's mean and sample std (None for n=1), mean params."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["config"], r["task"]), []).append(r)
    rows = []
    for (config, task), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], ORDER.get(kv[0][1], len(ORDER)), kv[0][1])):
        row = {"config": config, "task": task, "group": rs[0]["group"], "n": len(rs)}
        for key in (k for k in rs[0] if k not in LABELS):
            values = [r[key] for r in rs if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            if key not in PARAMS:  # an accuracy
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def vtab_means(rows: list[dict]) -> list[dict]:
    """Per config: each VTAB-1k group's mean test accuracy over its tasks present, then both overall means."""
    means = []
    for config in dict.fromkeys(r["config"] for r in rows):
        accs = {r["task"]: r["test_acc"] for r in rows if r["config"] == config and r["group"] != "own"}
        if not accs:
            continue
        groups = {g: [accs[t] for t in tasks if t in accs] for g, tasks in GROUPS.items()}
        groups = {g: statistics.mean(v) for g, v in groups.items() if v}
        for g, m in groups.items():
            means.append({"config": config, "mean": g, "tasks": f"{sum(t in accs for t in GROUPS[g])}/{len(GROUPS[g])}",
                          "test_acc": m})
        means.append({"config": config, "mean": "mean of tasks", "tasks": f"{len(accs)}/{len(TASKS)}",
                      "test_acc": statistics.mean(accs.values())})
        means.append({"config": config, "mean": "mean of group means", "tasks": f"{len(accs)}/{len(TASKS)}",
                      "test_acc": statistics.mean(groups.values())})
    return means


def fmt(v, std=None) -> str:
    if v is None:
        return "–"
    text = f"{v:.2f}" if isinstance(v, float) else str(v)
    return text if std is None else f"{text} ± {std:.2f}"


def markdown(rows: list[dict], means: list[dict]) -> str:
    with_config = any(r["config"] for r in rows)
    with_n = any(r["n"] > 1 for r in rows)
    cols = [c for c in rows[0] if not c.endswith("_std") and (c != "config" or with_config) and (c != "n" or with_n)]

    def cell(r, c):
        if c in PARAMS:
            return str(round(r[c]))
        return fmt(r[c], r.get(f"{c}_std"))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    if means:
        head = ["config"] * with_config + ["group", "tasks", "mean test_acc"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([m["config"]] * with_config + [m["mean"], m["tasks"], fmt(m["test_acc"])]) + " |"
                  for m in means]
    notes = []
    if with_n:
        notes.append("Accuracies: mean ± sample standard deviation over the n runs (seeds) of each task.")
    own = sorted({r["task"] for r in rows if r["group"] == "own"})
    if means and own:
        notes.append(f"Tasks of your own ({', '.join(own)}: group own) are not in the VTAB-1k group or overall means.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(folder: Path) -> tuple[str, list[Path]] | None:
    """Write the tables and figures into FOLDER; returns the Markdown and the files, or None without results."""
    runs = collect(folder)
    if not runs:
        return None
    rows = aggregate(runs)
    means = vtab_means(rows)
    text = markdown(rows, means)
    tables = {"results.md": text, "results.csv": to_csv(rows), "results_groups.csv": to_csv(means) if means else None}
    files = [folder / name for name, content in tables.items() if content is not None]
    for path in files:
        path.write_text(tables[path.name])
    with SummaryWriter(str(folder / "tb_summary"), purge_step=0) as tb:
        files += draw_summary(folder, figure_rows(runs), tb)
    return text, files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a run's output folder, a folder of runs, or a grid folder")
    args = p.parse_args()
    summary = write_summary(args.folder)
    if summary is None:
        print(f"error: no retrain/results.json under {args.folder}; run retrain.py first", file=sys.stderr)
        return 2
    text, files = summary
    print(text, end="")
    print(f"(written to {args.folder}: {', '.join(f.name for f in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
