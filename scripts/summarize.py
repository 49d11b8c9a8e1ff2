"""Collect `retrain/results.json` files under a folder into a results table (Markdown + CSV).

FOLDER is one run, a folder of runs (outputs/vtab/[<method>/]<task>/), or a grid of scripts/launch.py
(<grid>/[<config>/]<task>/seed<k>/). A run's config is its folder below FOLDER without the task and
seed levels (the grid's config, the method of vtab.sh --method), else the method in its results.
Per (config,) task: test accuracy (unmerged and merged; – where no merge applies) as mean ± sample
std over its runs (seeds) and their number n; trainable (adapters, trained backbone parameters
and head), adapter and head parameters (means).
Per config: the mean of each VTAB-1k group (natural, specialized, structured), the mean of the
VTAB tasks and the mean of the three group means; tasks of one's own (group `own`) are in neither.
Every table states its protocol (honest, or release-2023, whose accuracies are test-selected and
labelled so on every row). Few-shot runs (<grid>/<dataset>/shot<K>/seed<S>/) get a row per (dataset,
K), with GLoRA's published figure beside where there is one; domain-generalization runs a table of
their test sets. With VTAB-1k tasks, the published VTAB-1k rows of other methods (data/registry.py)
follow beside ours, over the same tasks, labelled published, each with the mean its source reports
and which mean that is. A family that does not merge has no merged accuracy (–) and a note says why.
A table of every run (seed) follows the means.
Writes results.md, results.csv (one row per task), results_groups.csv (the means), results_published.csv
(the published rows beside ours), results_runs.csv (one row per run) and two figures,
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

from data.registry import GROUPS, PUBLISHED_MEANS, TASKS, VTAB_SOURCES, lookup, published  # noqa: E402
from engine.figures import draw_summary  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

SEED_DIR = re.compile(r"seed\d+")
SHOT_DIR = re.compile(r"shot\d+")
LABELS = ("config", "task", "shots", "protocol", "group", "run", "seed", "method", "family", "why_not_merged")
HONEST = "honest"
PARAMS = ("trainable_params", "adapter_params", "head_params")  # shown as means; every other value is an accuracy
ORDER = {name: i for i, name in enumerate(TASKS)}  # VTAB tasks in the registry's (the papers') order


def collect(folder: Path) -> list[dict]:
    """One row per run, i.e. per folder holding a retrain/results.json."""
    runs = []
    for path in sorted(folder.glob("**/retrain/results.json")):
        r = json.loads(path.read_text())
        run = path.parent.parent
        task = lookup(r["task"], r.get("benchmark") or "vtab")
        row = {
            "config": config_label(folder, run, r["task"]) or r.get("method", ""), "task": r["task"],
            "shots": r.get("shots"), "protocol": r.get("protocol", HONEST),
            "group": task.group if task else "own", "test_acc": r["test_acc"], "test_acc_merged": r["test_acc_merged"],
            "trainable_params": r["trainable_params"], "adapter_params": r["adapter_params"],
            "head_params": r["head_params"], "run": str(run), "seed": _seed(run),
            "test_sets": r.get("test_sets") or {}, "method": r.get("method", ""), "family": r.get("family", "glora"),
            "why_not_merged": r.get("why_not_merged"),
        }
        runs.append(row)
    return runs


def config_label(folder: Path, run: Path, task: str) -> str:
    """The run's folder below FOLDER without its `<task>/seed<k>` levels: the grid's config, or ''."""
    parts = list(run.relative_to(folder).parts)
    if parts and SEED_DIR.fullmatch(parts[-1]):
        parts.pop()
    if parts and SHOT_DIR.fullmatch(parts[-1]):
        parts.pop()
    if parts and parts[-1] == task:
        parts.pop()
    return "/".join(parts)


def _seed(run: Path) -> str:
    """The run's seed from its folder (`seed<k>`), else from its config."""
    if SEED_DIR.fullmatch(run.name):
        return run.name[4:]
    config = run / "retrain" / "config.yaml"
    if config.is_file():
        m = re.search(r"^seed: (\d+)", config.read_text(), re.M)
        if m:
            return m.group(1)
    return ""


def figure_rows(runs: list[dict]) -> list[dict]:
    """One row per run (task, method: the config or GLoRA, test_acc, params: trainable) for the figures."""
    return [{"task": r["task"], "method": r["config"] or "GLoRA", "test_acc": r["test_acc"],
             "params": r["trainable_params"]} for r in runs]


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (config, task): n runs, each accuracy's mean and sample std (None for n=1), mean params."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["config"], r["task"], r["shots"] or 0, r["protocol"]), []).append(r)
    rows = []
    for (config, task, shots, proto), rs in sorted(
            cells.items(), key=lambda kv: (kv[0][0], ORDER.get(kv[0][1], len(ORDER)), kv[0][1], kv[0][2], kv[0][3])):
        row = {"config": config, "task": task, "shots": shots or None, "protocol": proto, "group": rs[0]["group"],
               "n": len(rs)}
        for key in (k for k in rs[0] if k not in LABELS and k != "test_sets"):
            values = [r[key] for r in rs if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            if key not in PARAMS:  # an accuracy
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        figure = published("fewshot", task, shots) if rs[0]["group"] == "fewshot" else None
        row["published"] = figure.test_acc if figure else None
        rows.append(row)
    return rows


def test_set_rows(runs: list[dict]) -> list[dict]:
    """Domain generalization: per (config, trained task, protocol, test set) the mean ± std over runs."""
    cells: dict[tuple, list[tuple]] = {}
    for r in runs:
        for name, t in r["test_sets"].items():
            cells.setdefault((r["config"], r["task"], r["protocol"], name), []).append((t["test_acc"], t["classes"]))
    rows = []
    for (config, task, proto, name), values in cells.items():
        accs = [v[0] for v in values]
        rows.append({"config": config, "trained on": task, "protocol": proto, "test set": name, "n": len(accs),
                     "test_acc": statistics.mean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                     "evaluated with": values[0][1]})
    return rows


def vtab_means(rows: list[dict]) -> list[dict]:
    """Per config: each VTAB-1k group's mean test accuracy over its tasks present, then both overall means."""
    means = []
    for config in dict.fromkeys(r["config"] for r in rows):
        accs = {r["task"]: r["test_acc"] for r in rows if r["config"] == config and r["group"] in GROUPS}
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


def published_rows(rows: list[dict], runs: list[dict]) -> list[dict]:
    """Our configs beside the published VTAB-1k rows, over the VTAB tasks present here (registry
    order): per row its accuracy per task, the mean over these tasks (like for like), and for a
    published row the mean its source reports over all 19 tasks, and which mean that is."""
    tasks = [t for t in TASKS if any(r["task"] == t and r["group"] in GROUPS for r in rows)]
    if not tasks:
        return []
    methods = {r["config"]: r["method"] for r in runs}
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        accs = {r["task"]: r["test_acc"] for r in rows if r["config"] == config and r["task"] in tasks}
        if accs:
            out.append({"method": methods.get(config) or config, "source": f"this code ({config or 'this run'})",
                        **{t: accs.get(t) for t in tasks},
                        "mean of these tasks": statistics.mean(accs.values()) if len(accs) == len(tasks) else None,
                        "reported mean": None, "params (M)": None})
    for m in PUBLISHED_MEANS:
        accs = {t: published("vtab", t, None, m.method, m.source).test_acc for t in tasks}
        out.append({"method": m.method, "source": f"published: {m.label}", **accs,
                    "mean of these tasks": statistics.mean(accs.values()),
                    "reported mean": f"{m.test_acc:.2f} ({m.kind})", "params (M)": m.params_m})
    return sorted(out, key=lambda r: (r["method"], not r["source"].startswith("this code")))


def fmt(v, std=None) -> str:
    if v is None:
        return "–"
    text = f"{v:.2f}" if isinstance(v, float) else str(v)
    return text if std is None else f"{text} ± {std:.2f}"


def protocol_label(p: str) -> str:
    return p if p == HONEST else f"{p} (test-selected)"


def markdown(rows: list[dict], means: list[dict], runs: list[dict] | None = None) -> str:
    with_config = any(r["config"] for r in rows)
    with_n = any(r["n"] > 1 for r in rows)
    shown = {"config": with_config, "n": with_n, "shots": any(r["shots"] for r in rows),
             "protocol": any(r["protocol"] != HONEST for r in rows),
             "published": any(r["published"] is not None for r in rows)}
    cols = [c for c in rows[0] if not c.endswith("_std") and shown.get(c, True)]

    def cell(r, c):
        if c in PARAMS:
            return str(round(r[c]))
        if c == "protocol":
            return protocol_label(r[c])
        if c == "published":
            return "–" if r[c] is None else f"{r[c]:.1f} (published)"
        return fmt(r[c], r.get(f"{c}_std"))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    if means:
        head = ["config"] * with_config + ["group", "tasks", "mean test_acc"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([m["config"]] * with_config + [m["mean"], m["tasks"], fmt(m["test_acc"])]) + " |"
                  for m in means]
    runs = runs or []
    sets = test_set_rows(runs)
    if sets:
        head = ["config"] * with_config + ["trained on", "test set", "n", "test_acc", "evaluated with"]
        head += ["protocol"] * shown["protocol"]
        lines += ["", "Test sets of the merged model (domain generalization):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([r["config"]] * with_config + [r["trained on"], r["test set"], str(r["n"]),
                                    fmt(r["test_acc"], r["test_acc_std"]), r["evaluated with"]]
                                   + [protocol_label(r["protocol"])] * shown["protocol"]) + " |" for r in sets]
    if with_n:
        head = ["config"] * with_config + ["task"] + ["shots"] * shown["shots"] + ["seed", "test_acc", "test_acc_merged"]
        head += ["protocol"] * shown["protocol"]
        lines += ["", "Every run:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sorted(runs, key=lambda r: (r["config"], ORDER.get(r["task"], len(ORDER)), r["task"], r["shots"] or 0,
                                             r["protocol"], r["seed"])):
            lines.append("| " + " | ".join([r["config"]] * with_config + [r["task"]] + [fmt(r["shots"])] * shown["shots"]
                                           + [r["seed"] or "–", fmt(r["test_acc"]), fmt(r["test_acc_merged"])]
                                           + [protocol_label(r["protocol"])] * shown["protocol"]) + " |")
    beside = published_rows(rows, runs)
    if beside:
        head = list(beside[0])
        lines += ["", "Published VTAB-1k figures beside ours (ViT-B/16 pretrained on ImageNet-21k, as the sources "
                  "report them; the published rows are not results of this code):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(fmt(r[c]) if not isinstance(r[c], str) else r[c] for c in head) + " |"
                  for r in beside]
    notes = []
    protocols = sorted({r["protocol"] for r in rows})
    notes.append("Protocol: " + "; ".join(
        "honest (search on the validation list, the final epoch's test accuracy evaluated once)" if p == HONEST else
        f"{p}: test-selected (every candidate scored on test, the best reported; not comparable with honest numbers)"
        for p in protocols) + ".")
    if with_n:
        notes.append("Accuracies: mean ± sample standard deviation over the n runs (seeds) of each task.")
    unmerged = {r["config"] or r["method"]: r["why_not_merged"] for r in runs if r["why_not_merged"]}
    for config, why in unmerged.items():
        notes.append(f"test_acc_merged – for {config or 'this run'}: {why}.")
    if beside:
        notes.append("Published rows: their mean over the tasks run here compares like for like with ours; the "
                     "reported mean is the source's own, over all 19 tasks, computed as that source says (which "
                     "mean it is follows each figure). Sources: " + "; ".join(
                         f"{label}: {source}" for label, source in VTAB_SOURCES.items()) + ".")
    if shown["published"]:
        notes.append("published: GLoRA's 16-shot accuracy as its authors published it (comment in their repository's "
                     "issue 14), for comparison; not a result of this run.")
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
    text = markdown(rows, means, runs)
    per_run = [{k: v for k, v in r.items() if k != "test_sets"} for r in runs]
    beside = published_rows(rows, runs)
    tables = {"results.md": text, "results.csv": to_csv(rows), "results_groups.csv": to_csv(means) if means else None,
              "results_published.csv": to_csv(beside) if beside else None,
              "results_runs.csv": to_csv(per_run) if any(r["n"] > 1 for r in rows) else None}
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
