"""Every config key, declared once: its default, its rule, one line of help, the stages whose
result depends on it, whether `--resume` may change it and whether upstream files must share it.

Everything else is derived from this table: the defaults that configs and `--set` override
(configs/defaults.yaml is written from it: `python -m engine.keys --write`), the check of every
value (engine.config.validate_config), `--help-config`, what a run records and its `--resume`
compares (engine.identity), and what an upstream file must share with the stage that reads it.
A new hyperparameter is one `Key(...)` here and the line that reads `cfg[section][name]`; a new
family of adapters adds its keys as one `section(...)`.
"""
from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from data.layout import BENCHMARKS
from data.transforms import INTERPOLATIONS
from glora.space import SearchSpace

from .protocol import PROTOCOLS
from .rules import FLAG, MAPPING, PATTERNS, TEXT, Rule, integer, matching, number, numbers, one_of, optional, text

STAGES = SUPERNET, SEARCH, RETRAIN = ("supernet", "search", "retrain")
ALL = STAGES
SUBNETS = ("searched", "uniform", "random")
MODULES = Rule(lambda v: isinstance(v, list) and all(isinstance(m, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", m)
                                                     for m in v), "a list of Python module names (e.g. [my_kinds])")
COMPILE = Rule(lambda v: v is True or v is False or v == "auto", "true, false or auto")  # retrain.subnet, or the path of a subnet YAML
_DEFAULT = object()  # `before`: the key's default


@dataclass(frozen=True)
class Key:
    """One config key. `stages`: the stages whose result depends on it (what their run records and
    `--resume` compare); `resume_free`: `--resume` may change it, because it cannot change a result
    (the help says why); `experiment`: an upstream file (a supernet, a subnet file) must have been
    made with the same value as the stage that reads it; `before`: the value that run records and
    files written before the key existed imply (default: the key's default, i.e. the key was added
    with a default that keeps the earlier behaviour); `mapping`: a free-form mapping merged key by
    key (model.kwargs); `serves(theirs, ours)`: for an experiment key whose upstream value may
    differ, what is refused and what is only noted (glora.space: a wider space serves a narrower)."""

    name: str
    default: Any
    rule: Rule
    help: str
    stages: Optional[tuple[str, ...]] = None  # None: the section's
    resume_free: bool = False
    experiment: Optional[bool] = None  # None: the section's
    mapping: bool = False
    before: Any = _DEFAULT
    serves: Optional[Callable[[Any, Any], tuple[list[str], list[str]]]] = None

    @property
    def before_value(self) -> Any:
        return self.default if self.before is _DEFAULT else self.before


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    keys: tuple[Key, ...]


def section(name: str, help: str, *keys: Key, stages: tuple[str, ...] = ALL, experiment: bool = False) -> Section:
    """Keys under `name.`, using by default the section's stages and experiment flag."""
    return Section(name, help, tuple(
        replace(k, name=f"{name}.{k.name}", stages=stages if k.stages is None else k.stages,
                experiment=experiment if k.experiment is None else k.experiment) for k in keys))


KEYS: dict[str, Key] = {}  # by dotted name, in declaration order (the order of configs/defaults.yaml)
SECTIONS: dict[str, str] = {}  # section -> its help


def declare(*items: Union[Key, Section]) -> list[str]:
    """Add keys (or sections of keys) to the table; returns their names. A key's default must pass its
    rule, or be null (a key the experiment must set, like data.task, or one resolved from others)."""
    names = []
    for item in items:
        if isinstance(item, Section):
            SECTIONS.setdefault(item.name, item.help)
            names += declare(*item.keys)
            continue
        key = replace(item, experiment=bool(item.experiment))
        parent = key.name.rpartition(".")[0]
        problem = ("declared twice" if key.name in KEYS or key.name in SECTIONS else
                   f"its section {parent!r} is not declared" if parent and parent not in SECTIONS else
                   "say which stages use it (stages=...)" if key.stages is None else
                   f"unknown stages {set(key.stages) - set(STAGES)}" if set(key.stages) - set(STAGES) else
                   f"its default {key.default!r} breaks its own rule ({key.rule.wanted})"
                   if key.default is not None and not key.rule.accepts(key.default) else None)
        if problem:
            raise ValueError(f"config key {key.name}: {problem}")
        KEYS[key.name] = key
        names.append(key.name)
    return names


@contextlib.contextmanager
def declared(*items: Union[Key, Section]):
    """Keys declared for the duration of a block (tests, experiments with a key of their own)."""
    sections = dict(SECTIONS)
    names = declare(*items)
    try:
        yield names
    finally:
        for name in names:
            KEYS.pop(name, None)
        SECTIONS.clear()
        SECTIONS.update(sections)


# --------------------------------------------------------------------------------- rules of one key

DEVICE = matching(r"auto|cpu|cuda(:[0-9]+)?", "auto, cpu, cuda or cuda:N")
TASK = Rule(lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v,
            "the name of a task folder under data.root: give an experiment config (e.g. configs/vtab/dtd.yaml) "
            "or --set data.task=NAME")
TASKS = Rule(lambda v: isinstance(v, list) and all(TASK.accepts(t) for t in v),
             "a list of task folder names under data.root (e.g. [imagenetv2, imagenet-sketch])")
PRETRAINED = Rule(lambda v: v is None or isinstance(v, (bool, str)), "false, a timm tag or a weights file path")
KWARGS = Rule(lambda v: v is None or isinstance(v, dict), "a mapping of timm.create_model keyword arguments")
RANKS = Rule(lambda v: isinstance(v, list) and bool(v) and all(integer(1).accepts(r) for r in v),
             "a non-empty list of positive integers (LoRA ranks)")
BUDGET = Rule(lambda v: numbers(2).accepts(v) and 0 <= v[0] <= v[1],
              "[min, max]: two finite numbers, 0 ≤ min ≤ max (millions of adapter parameters)")
SUBNET = Rule(lambda v: isinstance(v, str) and (v in SUBNETS or Path(v).suffix in (".yaml", ".yml")),
              f"{', '.join(SUBNETS)}, or the path of a subnet YAML (e.g. another run's search/best_subnet.yaml)")


def _space_served(theirs: dict, ours: dict) -> tuple[list[str], list[str]]:
    """glora.space of an upstream file (there) and of the stage reading it (here), each with its
    glora.ranks: a space within the file's is served (a note); a choice beyond it never trained there."""
    try:
        there, here = (SearchSpace(side["glora.ranks"], side["glora.space"]).choices for side in (theirs, ours))
    except (ValueError, TypeError) as e:  # a file written by hand, or damaged
        return [f"glora.space (unreadable: {e})"], []
    untrained = {t: [c for c in cs if c not in there[t]] for t, cs in here.items()}
    unused = {t: [c for c in cs if c not in here[t]] for t, cs in there.items()}
    if any(untrained.values()):
        return [f"glora.space (choices that never trained there: {_choices(untrained)})"], []
    return [], [f"glora.space is narrower here (trained there, not used here: {_choices(unused)})"] * any(unused.values())


def _choices(choices: dict) -> str:
    return "; ".join(f"{t}: {', '.join(cs)}" for t, cs in choices.items() if cs)


def schedule(what: str, epochs: int, min_epochs: int = 1) -> list[Key]:
    """The keys of a fine-tuning stage (train, retrain): epochs, AdamW and its cosine schedule, checkpoints."""
    return [
        Key("epochs", epochs, integer(min_epochs), f"epochs of {what}" + (
            "; 0: no training, the subnet is evaluated with the supernet's weights" if min_epochs == 0 else "")),
        Key("lr", 1.0e-4, number(above=True), "AdamW's peak learning rate (after warm-up, then cosine)"),
        Key("weight_decay", 1.0e-4, number(), "AdamW's weight decay (none on biases and other 1-D parameters)"),
        Key("warmup_epochs", 10, integer(0), "epochs of linear warm-up from warmup_lr"),
        Key("warmup_lr", 1.0e-6, number(), "the learning rate warm-up starts from"),
        Key("min_lr", 1.0e-5, number(), "the learning rate the cosine ends at"),
        Key("ckpt_every", 10, integer(1), "epochs between checkpoints (and always at the end); --resume may change "
            "it: it decides where a stopped run can continue from, not what it computes", resume_free=True),
    ]


declare(
    Key("seed", 0, integer(0, 2**63 - 1), "seeds every draw: initialization, sampled subnets, batch order, the "
        "search, a random subnet", ALL),
    Key("output", None, TEXT, "the run's folder, with supernet/ search/ retrain/ inside (null: "
        "outputs/<data.task>)", ()),
    Key("method", "glora", TEXT, "the method's name in results.json and tables (configs/methods/*.yaml set their own)",
        (RETRAIN,)),
    Key("plugins", [], MODULES, "Python modules imported before anything is checked (from PYTHONPATH or the "
        "working folder): they may register choice kinds (glora.kinds) or adapter families (glora.family)", ALL),
    Key("family", "glora", TEXT, "the adapter family (registered in glora.family; glora/families/ holds the built-in "
        "ones)", ALL, experiment=True),
    Key("adapter", {}, optional(MAPPING), "the settings of a family other than glora (each family declares its own, "
        "with defaults; a config that changes the family starts them afresh)", ALL, experiment=True, mapping=True),
    Key("protocol", "honest", one_of(*PROTOCOLS), "honest: search on val200, test once after retraining; "
        "release-2023: the authors' 2023 code path (supernet on train800val200, candidates scored on test, no "
        "retrain), every number test-selected", ALL, experiment=True),
    Key("supernet", None, optional(TEXT), "the supernet file that search and retrain read (null: "
        "<output>/supernet/supernet.safetensors)", (SEARCH, RETRAIN)),
    Key("device", "auto", DEVICE, "auto (cuda if available), cpu, cuda, cuda:1; --resume may change it (a requeued "
        "job on another GPU): the same computation, wherever it runs", ALL, resume_free=True),
    section(
        "model", "the backbone (upstream files must share it)",
        Key("name", "vit_base_patch16_224", TEXT, "a timm model name"),
        Key("pretrained", "orig_in21k", PRETRAINED, "false, a timm tag (from the hub), or a local "
            ".npz/.safetensors/.pth file"),
        Key("kwargs", {"drop_path_rate": 0.1}, KWARGS, "passed to timm.create_model (img_size, patch_size, depth, "
            "embed_dim, ...)", mapping=True),
        experiment=True),
    section(
        "data", "the task and how its images are read",
        Key("root", "datasets/vtab-1k", TEXT, "<root>/<task>/{train800,val200,train800val200,test}.txt; --resume "
            "may change it (the data moved): the lists' digest guards the data itself", resume_free=True),
        Key("task", None, TASK, "the task's folder under root", experiment=True),
        Key("benchmark", "vtab", one_of(*BENCHMARKS), "vtab, fewshot (NOAH's <root>/<dataset>/annotations/ lists) "
            "or dg (domain generalization)", experiment=True),
        Key("shots", None, optional(integer(1)), "fewshot, dg: K of the training list "
            "train_meta.list.num_shot_<K>.seed_<S>", experiment=True),
        Key("shot_seed", None, optional(integer(0)), "fewshot, dg: S of that list; null: the run's seed"),
        Key("test_sets", [], TASKS, "more test sets (task folders under root) the retrained, merged model is "
            "evaluated on", (RETRAIN,)),
        Key("num_classes", None, optional(integer(2)), "from the registry for VTAB tasks; given or derived from the "
            "labels for your own"),
        Key("img_size", 224, integer(1), "input size; images are resized to it (bicubic by default)",
            experiment=True),
        Key("interpolation", "bicubic", one_of(*INTERPOLATIONS), "the resize method", experiment=True),
        Key("mean", [0.485, 0.456, 0.406], numbers(3), "normalization mean (ImageNet's)", experiment=True),
        Key("std", [0.229, 0.224, 0.225], numbers(3, positive=True), "normalization std (ImageNet's)",
            experiment=True),
        Key("batch_size", 64, integer(1), "training batch", (SUPERNET, RETRAIN)),
        Key("eval_batch_size", 256, integer(1), "evaluation batch; --resume may change it: each image is scored "
            "alone, and the search's early stopping is exact at any batch size", resume_free=True),
        Key("resident_mb", 512, number(), "a split of at most this many MB (uint8) stays whole on the device, "
            "larger ones stream; --resume may change it: the same batches either way", resume_free=True),
        Key("cache", True, FLAG, "decode each split once; --resume may change it: the same pixels (there is no "
            "augmentation)", resume_free=True),
        Key("cache_dir", None, optional(text()), "default: <root>/<task>/.cache; --resume may change it (where the "
            "cache lives)", resume_free=True),
    ),
    section(
        "glora", "the adapters and their search space (upstream files must share them)",
        Key("ranks", [4], RANKS, "the LoRA ranks r of the lora_r choices"),
        Key("targets", None, optional(PATTERNS), "glob patterns over layer names; null: every nn.Linear but the head"),
        Key("exclude", [], optional(PATTERNS), "glob patterns of layers left plain"),
        Key("space", None, optional(MAPPING), "the choices each tensor may take, e.g. LoRA: {A: [none], B: [lora_4], "
            "C: [none], D: [none], E: [none]}; a tensor left out keeps all; null: the paper's space. A supernet "
            "serves searches within the space it trained on", mapping=True, serves=_space_served),
        experiment=True),
    section(
        "train", "stage 1: the supernet, on train800",
        *schedule("supernet training", 500),
        Key("amp", True, FLAG, "bf16 autocast on CUDA (ignored on the CPU), in every stage's forward", ALL),
        Key("compile", "auto", COMPILE, "the training step of supernet and retrain, and the evaluation forward, "
            "under torch.compile (CUDA graphs on one GPU): true, false, or auto (where the bench measured that it "
            "pays: CUDA, not the CPU); --resume may change it: it changes no result beyond the order of float "
            "operations", ALL, resume_free=True),
        Key("eval_every", 50, integer(0), "epochs between validations of the reference subnets; --resume may change "
            "it: logging only", resume_free=True),
        Key("eval_subnets", 3, integer(0), "fixed random subnets whose val200 accuracy is logged; --resume may "
            "change it: logging only", resume_free=True),
        stages=(SUPERNET,)),
    section(
        "search", "stage 2: evolution on val200",
        Key("generations", 20, integer(1), "generations of the evolution"),
        Key("population", 50, integer(1), "candidates per generation"),
        Key("parents", 10, integer(1), "the top-k candidates so far that breed"),
        Key("mutations", 25, integer(0), "mutated candidates per generation"),
        Key("mutation_prob", 0.2, number(hi=1.0), "probability that a mutation redraws a layer's tensor"),
        Key("crossovers", 25, integer(0), "crossed-over candidates per generation"),
        Key("budget", [0.0, 1.0], BUDGET, "[min, max] millions of adapter parameters (the paper's ViT-B subnets: "
            "~0.86M); retrain.subnet=random draws within it too", (SEARCH, RETRAIN)),
        Key("max_tries", 1000, integer(1), "attempts to draw one new in-budget, unseen candidate", (SEARCH, RETRAIN)),
        Key("early_stop", True, FLAG, "stop scoring a candidate that can no longer reach the parents; --resume may "
            "change it: exact, the search ends where exhaustive scoring ends", resume_free=True),
        stages=(SEARCH,)),
    section(
        "retrain", "stage 3: the chosen subnet, on train800val200, tested on test",
        *schedule("the retrain", 100, min_epochs=0),
        Key("init", "supernet", one_of("supernet", "scratch"), "supernet (its trained weights) or scratch"),
        Key("subnet", "searched", SUBNET, "searched (search.py's best_subnet.yaml), uniform (retrain.uniform in every "
            "layer), random (seeded, drawn within search.budget as the search draws), or a subnet YAML file"),
        Key("uniform", None, optional(MAPPING), "subnet: uniform's layer config, e.g. {A: vector, B: lora_4, "
            "D: vector}; left out: none", mapping=True),
        Key("backbone", "frozen", one_of("frozen", "bias", "all"), "what of the backbone trains too: frozen "
            "(adapters + head), bias (BitFit), all (full fine-tuning)"),
        stages=(RETRAIN,)),
)


# --------------------------------------------------------------------------------- derived views

def used_by(stage: str) -> list[str]:
    """The keys a stage's result depends on and its --resume compares (its resume-free keys aside)."""
    return [k.name for k in KEYS.values() if stage in k.stages and not k.resume_free]


def resume_free() -> list[str]:
    return [k.name for k in KEYS.values() if k.resume_free]


def experiment() -> list[str]:
    """What an upstream file and the stage that reads it must share."""
    return [k.name for k in KEYS.values() if k.experiment]


def before() -> dict[str, Any]:
    """What run records and files written before a key existed imply for it."""
    return {k.name: k.before_value for k in KEYS.values() if not k.mapping}


def defaults() -> dict:
    """The nested config of every key at its default (a fresh copy)."""
    import copy

    cfg: dict = {}
    for key in KEYS.values():
        *parents, leaf = key.name.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = copy.deepcopy(key.default)
    return cfg


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("\n...")


def _uses(key: Key) -> str:
    marks = [", ".join(key.stages) if key.stages else "no stage's result"]
    if key.resume_free:
        marks.append("--resume may change it")
    if key.experiment:
        marks.append("shared with upstream files")
    return "; ".join(marks)


def help_text() -> str:
    """`--help-config`: every key with its default, the stages that use it, and its help."""
    lines = ["Config keys (set them in an experiment YAML or with --set KEY=VALUE); [the stages whose result "
             "depends on a key]:", ""]
    for key in KEYS.values():
        lines.append(f"{key.name} = {_yaml(key.default)}   [{_uses(key)}]")
        lines.append(f"    {key.help}")
    return "\n".join(lines) + "\n"


HEADER = """\
# Every knob, with the values of the paper's release. An experiment file overrides a subset;
# `--set section.key=value` overrides on the command line. Unknown keys are errors.
# Written from the declaration of every key in engine/keys.py (`python -m engine.keys --write`):
# change a default or add a key there, not here. `python train.py --help-config` lists them all.
"""
_COLUMN, _WIDTH = 26, 118


def defaults_yaml() -> str:
    """configs/defaults.yaml: every key at its default, its help as a comment."""
    lines = [HEADER.rstrip("\n")]
    done: set[str] = set()
    for key in KEYS.values():
        *parents, leaf = key.name.split(".")
        for depth in range(len(parents)):
            name = ".".join(parents[: depth + 1])
            if name not in done:
                done.add(name)
                lines += _commented("  " * depth + f"{parents[depth]}:", SECTIONS.get(name, ""))
        lines += _commented("  " * len(parents) + f"{leaf}: {_yaml(key.default)}", key.help)
    return "\n".join(lines) + "\n"


def _commented(code: str, comment: str) -> list[str]:
    """`code  # comment`, the comment wrapped into further lines at the same column."""
    if not comment:
        return [code]
    import textwrap

    column = max(_COLUMN, len(code) + 2)
    parts = textwrap.wrap(comment, _WIDTH - column - 2, break_on_hyphens=False) or [""]
    return [f"{code:<{column}}# {parts[0]}".rstrip()] + [f"{'':<{column}}# {p}" for p in parts[1:]]


def main(argv: Optional[Iterable[str]] = None) -> int:
    """`python -m engine.keys`: print configs/defaults.yaml as the declaration gives it; `--write` writes it."""
    from .config import DEFAULTS

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write"]:
        DEFAULTS.write_text(defaults_yaml())
        print(f"wrote {DEFAULTS}")
    elif not argv:
        sys.stdout.write(defaults_yaml())
    else:
        print("usage: python -m engine.keys [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
