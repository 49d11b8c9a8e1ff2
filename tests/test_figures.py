"""The figures show what they say: checked on the drawn artists, then written as PNG and to TensorBoard."""
import random

import matplotlib.image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from engine.figures import (accuracy_params_figure, draw_search, draw_summary, search_figure, subnet_figure,
                            task_accuracy_figure)


def candidates(generations=3, per=5, seed=0):
    rng = random.Random(seed)
    return [{"generation": g, "acc1": rng.uniform(50, 90), "params": rng.randint(1000, 40000)}
            for g in range(generations) for _ in range(per)]


def test_search_figure_plots_every_candidate_by_generation_with_best_and_budget():
    cands = candidates()
    best = max(cands, key=lambda c: c["acc1"])
    ax = search_figure(cands, best, [0.005, 0.04]).axes[0]
    points, star = ax.collections[:2]
    assert points.get_offsets().tolist() == [[c["params"] / 1e6, c["acc1"]] for c in cands]
    assert points.get_array().tolist() == [c["generation"] for c in cands]  # colour = generation
    assert star.get_offsets().tolist() == [[best["params"] / 1e6, best["acc1"]]]
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [0.005, 0.04]  # the budget window
    assert "15 candidates in 3 generations" in ax.get_title()


def test_subnet_figure_maps_layers_by_tensors():
    subnet = {"blocks.0.attn.qkv": {"A": "lora_8", "B": "vector", "C": "none", "D": "scalar", "E": "vector"},
              "blocks.0.mlp.fc1": {"A": "none", "B": "lora_4", "C": "lora_4", "D": "none", "E": "scalar"}}
    fig = subnet_figure(subnet)
    ax = fig.axes[0]
    order = ["lora_4", "lora_8", "vector", "scalar", "none"]
    cells = ax.images[0].get_array().tolist()
    assert cells == [[order.index(subnet[n][t]) for t in "ABCDE"] for n in subnet]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(subnet)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("ABCDE")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == order


def rows():
    out = []
    for task in ("dtd", "eurosat"):
        for method, params, accs in (("GLoRA", 900_000, (70.0, 72.0)), ("linear probe", 40_000, (50.0,))):
            out += [{"task": task, "method": method, "test_acc": a + (task == "eurosat") * 20, "params": params} for a in accs]
    return out


def test_task_accuracy_figure_shows_mean_per_task_and_method():
    ax = task_accuracy_figure(rows()).axes[0]
    heights = [[round(b.get_height(), 6) for b in c] for c in ax.containers if hasattr(c, "patches")]
    assert heights == [[71.0, 91.0, 81.0], [50.0, 70.0, 60.0]]  # dtd, eurosat, mean; per method
    assert [t.get_text() for t in ax.get_xticklabels()] == ["dtd", "eurosat", "mean"]
    # no mean column when a method misses a task (means over different tasks would mislead)
    partial = [r for r in rows() if not (r["task"] == "eurosat" and r["method"] == "linear probe")]
    assert [t.get_text() for t in task_accuracy_figure(partial).axes[0].get_xticklabels()] == ["dtd", "eurosat"]
    # the title says how many runs each bar holds: no ± with one run
    assert ax.get_title() == "Test accuracy per task (mean over n = 1–2 runs, ± std where n > 1)"
    single = [r for r in rows() if r["test_acc"] not in (72.0, 92.0)]
    assert task_accuracy_figure(single).axes[0].get_title() == "Test accuracy per task (one run each)"
    glora = [r for r in rows() if r["method"] == "GLoRA"]
    assert task_accuracy_figure(glora).axes[0].get_title() == "Test accuracy per task (mean ± std over n = 2 runs)"


def test_accuracy_params_figure_places_runs_and_method_means():
    ax = accuracy_params_figure(rows()).axes[0]
    glora_runs, glora_mean, probe_runs, probe_mean = ax.collections
    assert glora_runs.get_offsets().tolist() == [[900_000, 70.0], [900_000, 72.0], [900_000, 90.0], [900_000, 92.0]]
    assert glora_mean.get_offsets().tolist() == [[900_000, 81.0]]
    assert probe_mean.get_offsets().tolist() == [[40_000, 60.0]]
    assert ax.get_xscale() == "log"


def test_figures_are_written_as_png_and_to_tensorboard(tmp_path):
    cands = candidates()
    best = max(cands, key=lambda c: c["acc1"])
    subnet = {"fc": {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "scalar"}}
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        paths = draw_search(tmp_path, cands, best, [0, 0.05], subnet, writer, step=3)
        paths += draw_summary(tmp_path, rows(), writer)
    assert [p.name for p in paths] == ["candidates.png", "subnet.png", "accuracy_per_task.png", "accuracy_vs_params.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(p).shape
        assert height > 200 and width > 200
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["images"]) == {"search/candidates", "search/subnet", "summary/accuracy_per_task",
                                            "summary/accuracy_vs_params"}
    assert events.Images("search/candidates")[0].step == 3
