"""Collect the finished runs under a folder into a results table (Markdown + CSV).

A run counts once its retrain's run record (retrain/run.yaml) says finished; its numbers come from
retrain/results.json. Runs left out (unfinished, a damaged results.json) are named under the table.

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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.registry import GROUPS, PUBLISHED_MEANS, TASKS, VTAB_SOURCES, lookup, published
from engine.figures import draw_summary
from torch.utils.tensorboard import SummaryWriter

SEED_DIR = re.compile(r"seed\d+")
SHOT_DIR = re.compile(r"shot\d+")
LABELS = ("config", "task", "shots", "protocol", "group", "run", "seed", "method", "family", "why_not_merged")
HONEST = "honest"
PARAMS = ("trainable_params", "adapter_params", "head_params")  # shown as means; every other value is an accuracy
ORDER = {name: i for i, name in enumerate(TASKS)}  # VTAB tasks in the registry's (the papers') order


STAGE_FOLDERS = ("supernet", "search", "retrain")
NUMBERS = ("test_acc", "trainable_params", "adapter_params", "head_params")  # required in results.json


def collect(folder: Path) -> list[dict]:
    """One row per finished run (a folder whose retrain/run.yaml says finished, with its results.json)."""
    return survey(folder)[0]


def survey(folder: Path, stale: dict | None = None) -> tuple[list[dict], list[str]]:
    """The rows of `collect`, and a line for each run left out: unfinished, with a damaged results.json,
    or in `stale` (run folder → why)."""
    stale = {Path(k).resolve(): why for k, why in (stale or {}).items()}
    runs, left_out = [], []
    for run in run_folders(folder):
        if supernet_alone(run):
            continue
        label = "." if run == folder else str(run.relative_to(folder))
        why = stale.get(run.resolve()) or unfinished(run)
        if why:
            left_out.append(f"{label}: {why}")
            continue
        path = run / "retrain" / "results.json"
        try:
            runs.append(result_row(folder, run, path))
        except ValueError as e:
            left_out.append(f"{label}: {path.relative_to(folder)} is damaged ({e}); run its retrain again")
    return runs, left_out


def run_folders(folder: Path) -> list[Path]:
    """Every folder under FOLDER (or FOLDER itself) holding a run: a retrain's results, or a stage's run record."""
    marks = [*folder.glob("**/retrain/results.json"), *folder.glob("**/run.yaml")]
    return sorted({m.parent.parent for m in marks if m.parent.name in STAGE_FOLDERS})


def supernet_alone(run: Path) -> bool:
    """A finished supernet with no search or retrain beside it (a budget sweep's, or one imported):
    not a run of the table."""
    return (not (run / "search").is_dir() and not (run / "retrain").is_dir()
            and (_record(run / "supernet" / "run.yaml") or {}).get("finished") is not None)


def unfinished(run: Path) -> str | None:
    """Why a run is not finished (its retrain's run record does not say finished), or None. A
    results.json without a run record (written by an older version) counts as finished."""
    stages = [s for s in STAGE_FOLDERS if (run / s).is_dir()]
    records = {s: _record(run / s / "run.yaml") for s in stages}
    if "retrain" in records and records["retrain"] is None and (run / "retrain" / "results.json").is_file():
        return None
    if (records.get("retrain") or {}).get("finished"):
        return None
    last = stages[-1] if stages else "retrain"
    state = "finished" if (records.get(last) or {}).get("finished") else "stopped, failed or still running"
    return f"unfinished (its {last} {state}; no finished retrain)"


def _record(path: Path) -> dict | None:
    """A stage's run record, None where it is missing or unreadable."""
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return record if isinstance(record, dict) else None


def result_row(folder: Path, run: Path, path: Path) -> dict:
    """A run's row from its results.json; ValueError says what is wrong with the file."""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if not isinstance(r, dict) or not isinstance(r.get("task"), str):
        raise ValueError("no task")
    for key in (*NUMBERS, "test_acc_merged"):
        value = r.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) or
                (value is None and key == "test_acc_merged")):
            raise ValueError(f"{key} is {value!r}, not a number")
    task = lookup(r["task"], r.get("benchmark") or "vtab")
    return {
        "config": config_label(folder, run, r["task"]) or r.get("method", ""), "task": r["task"],
        "shots": r.get("shots"), "protocol": r.get("protocol", HONEST),
        "group": task.group if task else "own", "test_acc": r["test_acc"], "test_acc_merged": r["test_acc_merged"],
        "trainable_params": r["trainable_params"], "adapter_params": r["adapter_params"],
        "head_params": r["head_params"], "run": str(run), "seed": _seed(run),
        "test_sets": r.get("test_sets") or {}, "method": r.get("method", ""), "family": r.get("family", "glora"),
        "why_not_merged": r.get("why_not_merged"),
    }


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


def markdown(rows: list[dict], means: list[dict], runs: list[dict] | None = None, left_out: list[str] = ()) -> str:
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
    if left_out:
        notes += [f"Left out ({len(left_out)} run{'s' * (len(left_out) > 1)}):", *(f"- {line}" for line in left_out)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(folder: Path, stale: dict | None = None) -> tuple[str, list[Path]] | None:
    """Write the tables and figures into FOLDER; returns the Markdown and the files, or None without a
    finished run (then nothing is written). `stale`: run folders to leave out, with why (a launcher's
    refused cells); the table names them, and every run left out as unfinished or damaged."""
    runs, left_out = survey(folder, stale)
    if not runs:
        return None
    rows = aggregate(runs)
    means = vtab_means(rows)
    text = markdown(rows, means, runs, left_out)
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
        for line in survey(args.folder)[1]:
            print(f"left out: {line}", file=sys.stderr)
        print(f"error: no finished run (retrain/results.json) under {args.folder}; run retrain.py first",
              file=sys.stderr)
        return 2
    text, files = summary
    print(text, end="")
    print(f"(written to {args.folder}: {', '.join(f.name for f in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
