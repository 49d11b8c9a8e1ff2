"""Figures a person looks at before any table: the search, the chosen subnet, and many runs side by side.

Each `*_figure` function takes plain data (dicts as the stages write them) and returns a matplotlib
Figure; `save_figure` writes it as a PNG beside the outputs and, given a writer, into TensorBoard.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Iterable, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or used if there is one

from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glora.io import atomic_write
from glora import kinds


def save_figure(fig: Figure, path, writer=None, tag: Optional[str] = None, step: int = 0) -> Path:
    """Write `fig` as a PNG at `path` (atomically) and, with a TensorBoard writer, under `tag`."""
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    if writer is not None:
        writer.add_figure(tag or Path(path).stem, fig, global_step=step)  # closes the figure
    return path


# --------------------------------------------------------------------------------- the search

def search_figure(candidates: Iterable[Mapping], best: Mapping, budget_m: Sequence[float]) -> Figure:
    """Validation accuracy against adapter parameters of every scored candidate, coloured by generation.

    `candidates` and `best`: dicts with `generation`, `acc1` (%) and `params` (as in candidates.jsonl);
    `budget_m`: the search's [min, max] window in millions of parameters, drawn as two lines.
    """
    candidates = list(candidates)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    gens = sorted({c["generation"] for c in candidates})
    cmap = colormaps["viridis"].resampled(len(gens))
    norm = BoundaryNorm([g - 0.5 for g in gens] + [gens[-1] + 0.5], cmap.N)
    points = ax.scatter([c["params"] / 1e6 for c in candidates], [c["acc1"] for c in candidates],
                        c=[c["generation"] for c in candidates], cmap=cmap, norm=norm, s=22, alpha=0.85)
    fig.colorbar(points, ax=ax, label="generation", ticks=gens)
    ax.scatter([best["params"] / 1e6], [best["acc1"]], marker="*", s=260, color="red", edgecolor="black",
               zorder=3, label=f"best: {best['acc1']:.2f}% with {best['params']:,} parameters")
    for x, text, side in zip(budget_m, ("budget min", "budget max"), ("left", "right")):
        ax.axvline(x, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f" {text} " if side == "left" else f"{text} ", (x, 0.98), xycoords=("data", "axes fraction"),
                    va="top", ha=side, fontsize=8, color="gray")
    ax.set(xlabel="adapter parameters (M)", ylabel="val accuracy (%)",
           title=f"Evolutionary search: {len(candidates)} candidates in {len(gens)} generations")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------- the chosen subnet

def _choice_order(choice) -> tuple:
    if not isinstance(choice, str):  # a size (prompt tokens, rank, width; 0: off)
        return 0, choice
    kind, rank = kinds.parse(choice)
    return list(kinds.KINDS).index(kind.name), rank


def _colours(choices: list) -> dict:
    """Sizes in greens (0, off, like none); GLoRA's ranked kinds (lora_r) in blues, the other kinds
    in their own colours (glora/kinds.py)."""
    sizes = [c for c in choices if not isinstance(c, str) and c]
    ranked = [c for c in choices if isinstance(c, str) and kinds.parse(c)[0].ranked]
    colours = {0: "#eeeeee"}
    for group, shades in ((sizes, colormaps["Greens"]), (ranked, colormaps["Blues"])):
        colours.update({c: shades(0.45 + 0.45 * i / max(len(group) - 1, 1)) for i, c in enumerate(group)})
    colours.update({c: kinds.parse(c)[0].colour for c in choices if isinstance(c, str) and c not in colours})
    return colours


def _label(choice) -> str:
    if not isinstance(choice, str):
        return str(choice) if choice else ""
    kind, rank = kinds.parse(choice)
    return kind.figure_label(rank)


def subnet_figure(subnet: Mapping[str, Mapping], title: str = "Chosen subnet") -> Figure:
    """A layers × keys map of a subnet's choices (GLoRA's A..E per adapted layer, or a family's keys
    per block, e.g. sizes), one colour per choice."""
    names = list(subnet)
    keys = list(next(iter(subnet.values())))
    choices = sorted({c for cfg in subnet.values() for c in cfg.values()}, key=_choice_order)
    colours = _colours(choices)
    palette = [to_rgba(colours[c]) for c in choices]
    grid = [[choices.index(subnet[n][k]) for k in keys] for n in names]

    fig = Figure(figsize=(4.8, 1.6 + 0.22 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, cmap=ListedColormap(palette), vmin=-0.5, vmax=len(choices) - 0.5, aspect="auto")
    for i, row in enumerate(grid):
        for j, k in enumerate(row):
            r, g, b, _ = palette[k]
            ax.text(j, i, _label(choices[k]), ha="center", va="center", fontsize=7,
                    color="white" if 0.3 * r + 0.6 * g + 0.1 * b < 0.5 else "black")
    ax.set_xticks(range(len(keys)), keys)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks([j - 0.5 for j in range(1, len(keys))], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(names))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=9)
    fig.legend(handles=[Patch(color=colours[c], label=str(c)) for c in choices], loc="outside lower center",
               ncol=min(len(choices), 4), fontsize=7, frameon=False)
    return fig


# --------------------------------------------------------------------------------- many runs

def _by_task_method(rows: Iterable[Mapping]) -> dict:
    """{(task, method): [rows]}, in first-seen order (several seeds of one run share a key)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"])].append(r)
    return groups


def task_accuracy_figure(rows: Iterable[Mapping]) -> Figure:
    """Test accuracy per task, one bar per method (mean ± std over repeated runs; the title says n).

    `rows`: dicts with `task`, `method`, `test_acc` (%). When every method ran every task, a last
    group shows each method's mean over the tasks.
    """
    groups = _by_task_method(rows)
    tasks = list(dict.fromkeys(t for t, _ in groups))
    methods = list(dict.fromkeys(m for _, m in groups))
    acc = {k: [r["test_acc"] for r in v] for k, v in groups.items()}
    columns = tasks + (["mean"] if len(tasks) > 1 and len(groups) == len(tasks) * len(methods) else [])
    for m in methods if "mean" in columns else ():
        acc[("mean", m)] = [mean(mean(acc[(t, m)]) for t in tasks)]

    fig = Figure(figsize=(max(5.0, 1.0 + 0.5 * len(columns) * max(len(methods), 2)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j, t in enumerate(columns) if (t, m) in acc]
        vals = [acc[(t, m)] for t in columns if (t, m) in acc]
        bars = ax.bar(xs, [mean(v) for v in vals], width, label=m)
        if len(columns) * len(methods) <= 40:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", rotation=90, color="white")
        spread = [(x, mean(v), stdev(v)) for x, v in zip(xs, vals) if len(v) > 1]
        if spread:
            ax.errorbar(*zip(*spread), fmt="none", ecolor="black", capsize=2, linewidth=1)
    tilt = len(columns) > 6
    ax.set_xticks(range(len(columns)), columns, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title=f"Test accuracy per task ({_runs_phrase(groups)})")
    fig.legend(loc="outside lower center", ncol=min(len(methods), 5), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _runs_phrase(groups: Mapping) -> str:
    """How many runs each bar holds: one each, n = k each (mean ± std), or a range."""
    counts = sorted({len(v) for v in groups.values()})
    if counts == [1]:
        return "one run each"
    if len(counts) == 1:
        return f"mean ± std over n = {counts[0]} runs"
    return f"mean over n = {counts[0]}–{counts[-1]} runs, ± std where n > 1"


def accuracy_params_figure(rows: Iterable[Mapping]) -> Figure:
    """Test accuracy against trainable parameters, one colour per method.

    `rows`: dicts with `task`, `method`, `test_acc` (%) and `params` (trainable parameters: adapters,
    the backbone parameters a baseline trains, and head). Each run is a small point; with several tasks, each method's mean over its tasks is
    a large labelled marker.
    """
    groups = _by_task_method(rows)
    methods = list(dict.fromkeys(m for _, m in groups))
    tasks = {t for t, _ in groups}
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab10"]
    for i, m in enumerate(methods):
        runs = [r for (t, mm), rs in groups.items() if mm == m for r in rs]
        ax.scatter([r["params"] for r in runs], [r["test_acc"] for r in runs], color=colours(i % 10),
                   s=18 if len(tasks) > 1 else 60, alpha=0.5 if len(tasks) > 1 else 1.0,
                   label=m if len(tasks) == 1 else None)
        if len(tasks) > 1:
            x, y = mean(r["params"] for r in runs), mean(r["test_acc"] for r in runs)
            n = len({r["task"] for r in runs})
            ax.scatter([x], [y], color=colours(i % 10), s=120, marker="D", edgecolor="black",
                       label=f"{m} (mean of {n} tasks)")
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    params = [r["params"] for rs in groups.values() for r in rs]
    if min(params) > 0 and max(params) / min(params) > 10:
        ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (adapters or backbone, + head)", ylabel="test accuracy (%)",
           title="Accuracy against trainable parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def draw_summary(folder, rows: Sequence[Mapping], writer=None) -> list[Path]:
    """The two figures of many runs, as PNGs in `folder` (and in TensorBoard with a writer)."""
    folder = Path(folder)
    return [save_figure(task_accuracy_figure(rows), folder / "accuracy_per_task.png", writer, "summary/accuracy_per_task"),
            save_figure(accuracy_params_figure(rows), folder / "accuracy_vs_params.png", writer,
                        "summary/accuracy_vs_params")]


def draw_search(folder, candidates: Sequence[Mapping], best: Mapping, budget_m: Sequence[float],
                subnet: Mapping[str, Mapping[str, str]], writer=None, step: int = 0) -> list[Path]:
    """The search's figures in `folder`: candidates.png (every scored candidate) and subnet.png (the best's choices)."""
    folder = Path(folder)
    title = f"Chosen subnet\n{best['params']:,} adapter parameters, val accuracy {best['acc1']:.2f}%"
    return [save_figure(search_figure(candidates, best, budget_m), folder / "candidates.png", writer,
                        "search/candidates", step),
            save_figure(subnet_figure(subnet, title), folder / "subnet.png", writer, "search/subnet", step)]
