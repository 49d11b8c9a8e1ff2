"""From a resolved config to the objects every stage needs: the adapted model, the data splits (the
task's, in its benchmark's layout, and the further test sets of domain generalization), what the
export says of the model (merged file metadata, Hub folder or, for a family that does not merge,
a model card with the measured inference cost) and the final model's test-set accuracies."""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from data import load_split
from data.layout import Layout, layout_of
from data.lists import list_file
from data.registry import DG_TASKS
from data.splits import SplitData
from data.test_sets import load_test_set, read_test_set

from glora.errors import UserError
from glora.hub import save_hub_folder
from glora.io import atomic_write
from glora.model import count_params, create_model

from . import distributed, method, protocol
from .loops import autocast, evaluate


def build_model(cfg: dict, num_classes: int, sampler: random.Random | None = None) -> nn.Module:
    """The backbone with its fresh head and the experiment's adapter family injected (a supernet's
    layers draw their subnets from `sampler`); only adapters and head train."""
    m = cfg["model"]
    model = create_model(m["name"], num_classes, m["pretrained"], **(m["kwargs"] or {}))
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    want = (cfg["data"]["img_size"],) * 2
    if size is not None and tuple(size) != want:
        raise UserError(f"data.img_size={want[0]} but model {m['name']} takes {tuple(size)} images: "
                        "set model.kwargs.img_size to the same size")
    family = method.family(cfg)
    try:
        family.inject(model, rng=sampler)
    except ValueError as e:
        raise UserError(f"{method.where(family)}: {e}") from None
    family.mark_trainable(model)
    return model


def layout(cfg: dict) -> Layout:
    """Which list file each split of the task is (data.benchmark; the K-shot list of data.shots and
    data.shot_seed, which follows the run's seed when null)."""
    d = cfg["data"]
    return layout_of({**d, "shot_seed": cfg["seed"] if d["shot_seed"] is None else d["shot_seed"]})


def load_data(cfg: dict, split: str) -> SplitData:
    """A split of the run's task, through the decode cache."""
    d = cfg["data"]
    return _decoded(cfg, lambda: load_split(d["root"], d["task"], split, num_classes=d["num_classes"],
                                            img_size=d["img_size"], interpolation=d["interpolation"],
                                            cache=d["cache"], cache_dir=d["cache_dir"], layout=layout(cfg)))


def _decoded(cfg: dict, load):
    """`load()`; with the decode cache under torchrun, rank 0 decodes into the cache first and the
    others then read it."""
    return distributed.rank0_first(load) if cfg["data"]["cache"] else load()


def check_test_sets(cfg: dict, num_classes: int) -> None:
    """data.test_sets: each set's list exists and its labels fit the model's classes (decodes nothing)."""
    for name in cfg["data"]["test_sets"]:
        read_test_set(cfg["data"]["root"], name, num_classes)


def load_test_sets(cfg: dict, num_classes: int) -> dict[str, SplitData]:
    """data.test_sets: the further sets the retrained model is tested on (domain-generalization targets)."""
    d = cfg["data"]

    def load(task):
        return lambda: load_test_set(d["root"], task, num_classes, img_size=d["img_size"], interpolation=d["interpolation"],
                                     cache=d["cache"], cache_dir=d["cache_dir"])

    return {t: _decoded(cfg, load(t)) for t in d["test_sets"]}


def train_loader(cfg: dict, split: SplitData, device: torch.device):
    """Shuffled, normalized batches of a split on `device` (held there if within data.resident_mb)."""
    d = cfg["data"]
    return split.loader(d["batch_size"], device=device, resident_mb=d["resident_mb"], shuffle=True,
                        seed=cfg["seed"], mean=d["mean"], std=d["std"])


def eval_loader(cfg: dict, split: SplitData, device: torch.device):
    """Batches of data.eval_batch_size in list order, normalized one by one on `device`: a split
    within data.resident_mb is held there (val200 for the search), a larger one is read from its
    cache file batch by batch (the test splits), so no evaluation holds a whole large split."""
    d = cfg["data"]
    return split.loader(d["eval_batch_size"], device=device, resident_mb=d["resident_mb"], mean=d["mean"],
                        std=d["std"])


def export_metadata(cfg: dict, num_classes: int) -> dict:
    """What a merged file says of its model, for `glora.model.load_merged` and for a reader: the
    timm name and kwargs, the class count, the input size and preprocessing."""
    m, d = cfg["model"], cfg["data"]
    return {"model": m["name"], "model_kwargs": m["kwargs"] or {}, "num_classes": num_classes,
            "img_size": d["img_size"], "interpolation": d["interpolation"], "mean": d["mean"], "std": d["std"]}


def save_hub(cfg: dict, merged: nn.Module, results: dict) -> Path:
    """The merged model in timm's Hub format under `<output>/retrain/hub/` (glora.hub), its model
    card naming the task, the method, the protocol, the test accuracy and the parameter counts."""
    d, r, family = cfg["data"], cfg["retrain"], method.family(cfg)
    acc = results["test_acc"] if results["test_acc_merged"] is None else results["test_acc_merged"]
    return save_hub_folder(
        merged, Path(cfg["output"]) / "retrain" / "hub", img_size=d["img_size"], mean=d["mean"], std=d["std"],
        interpolation=d["interpolation"], model_args=cfg["model"]["kwargs"], weights=results["merged_checkpoint"],
        method=f"{family.paper}, merged into the plain model", name=f"{cfg['model']['name']}.{family.name}_{d['task']}",
        details={
            "Task": f"{d['task']} ({results['num_classes']} classes)",
            "Method": f"{cfg['method']} (subnet {r['subnet']}, backbone {r['backbone']}, init {r['init']})",
            "Protocol": protocol.description(cfg),
            "Test accuracy (%)": round(acc, 2), "Adapter parameters": results["adapter_params"],
            "Head parameters": results["head_params"]})


def inference_cost(cfg: dict, model: nn.Module, batches, device: torch.device, images: int = 64,
                   repeats: int = 10) -> dict:
    """What an unmerged model's adapters cost at inference: their parameters beyond the plain
    backbone, and the forward time of (up to) `images` test images against the plain model's (the
    same backbone and head without the adapters), the two timed in turns, median of `repeats`."""
    m = cfg["model"]
    plain = create_model(m["name"], model.num_classes, False, **(m["kwargs"] or {}))
    state = model.state_dict()
    plain.load_state_dict({k: state[k] for k in plain.state_dict()})  # every plain key is the model's own
    plain.to(device).eval()
    model.eval()
    x = next(iter(batches))[0][:images].to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"plain": [], "adapted": []}
    with torch.inference_mode(), autocast(device, cfg["train"]["amp"]):
        plain(x), model(x)  # warm-up
        for _ in range(repeats):
            for name, net in (("plain", plain), ("adapted", model)):
                sync()
                start = time.perf_counter()
                net(x)
                sync()
                times[name].append(time.perf_counter() - start)
    plain_ms, adapted_ms = (1000 * statistics.median(times[k]) for k in ("plain", "adapted"))
    return {"extra_params": count_params(model) - count_params(plain), "plain_params": count_params(plain),
            "plain_ms": plain_ms, "adapted_ms": adapted_ms, "time_ratio": adapted_ms / plain_ms,
            "images": len(x), "device": str(device), "repeats": repeats}


def save_card(cfg: dict, family, results: dict) -> Path:
    """`<output>/retrain/README.md`: the model card of a model whose family does not merge — its
    adapters file, how to load it onto the plain timm model, and the extra inference cost."""
    d, m, cost = cfg["data"], cfg["model"], results["inference"]
    folder = Path(cfg["output"]) / "retrain"
    kwargs = "".join(f", {k}={v!r}" for k, v in (m["kwargs"] or {}).items())
    text = "\n".join([
        f"# {m['name']}.{family.name}_{d['task']}", "",
        f"A `{m['name']}` fine-tuned with {family.paper}, {results['num_classes']} classes of {d['task']}. "
        f"It does not merge into the plain model: {family.why_not_merged}.", "",
        f"- Method: {cfg['method']} (family {family.name}, settings {family.options})",
        f"- Protocol: {protocol.description(cfg)}",
        f"- Test accuracy (%): {results['test_acc']:.2f}",
        f"- Adapter parameters: {results['adapter_params']:,}; head parameters: {results['head_params']:,}",
        f"- Extra inference cost: {cost['extra_params']:,} parameters beyond the plain model's "
        f"{cost['plain_params']:,} (+{100 * cost['extra_params'] / cost['plain_params']:.2f}%); a forward of "
        f"{cost['images']} images on {cost['device']} takes {cost['adapted_ms']:.2f} ms against the plain model's "
        f"{cost['plain_ms']:.2f} ms (x{cost['time_ratio']:.2f}, median of {cost['repeats']}, timed in turns)",
        f"- Preprocessing: resize to {d['img_size']}x{d['img_size']} ({d['interpolation']}, no crop), "
        f"normalize with mean {list(d['mean'])}, std {list(d['std'])}", "",
        "## Usage", "", "```python",
        "from glora.family import attach",
        "from glora.model import create_model", "",
        f"backbone = create_model({m['name']!r}, {results['num_classes']}, {m['pretrained']!r}{kwargs})  "
        "# the pretrained backbone it was trained on",
        f"model = attach(backbone, {Path(results['adapters_checkpoint']).name!r})  "
        f"# adds the {family.name} adapters and head",
        "```", ""])
    return atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def test_on_sets(cfg: dict, merged: nn.Module, test_sets: dict, device: torch.device, test_acc: float,
                 test_images: int) -> dict:
    """The merged model's accuracy on the task's own test and on every data.test_sets set; a set that
    the registry marks (ImageNet-A, -R) is scored with the logits of the classes it holds alone."""
    if not test_sets:
        return {}
    k = next(iter(test_sets.values())).num_classes  # the model's, which every set was checked against
    rows = {cfg["data"]["task"]: {"test_acc": test_acc, "images": test_images, "classes": f"all {k}",
                                  "restricted": False}}
    for name, split in test_sets.items():
        entry = DG_TASKS.get(name)
        classes = torch.unique(split.labels) if entry is not None and entry.restrict else None
        acc = evaluate(merged, eval_loader(cfg, split, device), device, amp=False, classes=classes)
        rows[name] = {"test_acc": acc, "images": len(split), "restricted": classes is not None,
                      "classes": (f"logits restricted to the {len(classes)} classes present" if classes is not None
                                  else f"all {split.num_classes}")}
    return rows


def benchmark_labels(cfg: dict) -> dict:
    """What a results file says of its data beyond the task: the benchmark, K and S of a K-shot
    list, and whether the selection list is the test list (a copy without a held-out list: then
    the search and the supernet's validation select on test, and its accuracy is test-selected)."""
    d = cfg["data"]
    shot = d["benchmark"] != "vtab"
    lists = layout(cfg)
    selection, test = (list_file(d["root"], d["task"], s, lists).path for s in ("val200", "test"))
    return {"benchmark": d["benchmark"], "shots": d["shots"] if shot else None,
            "shot_seed": lists.shot_seed if shot else None, "selection_is_test": selection == test}
