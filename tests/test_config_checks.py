"""Every config value is checked before any work: one rule per key, one line naming the key and the fix."""
import math

import pytest
import yaml

from engine.config import DEFAULTS, flatten, load_config
from engine.validate import RULES, validate_config
from glora.errors import UserError

DEMO = DEFAULTS.parent / "demo.yaml"


def test_every_config_key_has_a_rule_and_every_rule_a_key():
    keys = {k for k in flatten(yaml.safe_load(DEFAULTS.read_text())) if not k.startswith("model.kwargs.")}
    assert keys | {"model.kwargs"} == set(RULES)


@pytest.mark.parametrize("path", [DEMO, *sorted((DEFAULTS.parent / "vtab").glob("*.yaml"))], ids=lambda p: p.stem)
def test_shipped_configs_pass(path):
    validate_config(load_config(str(path)))


BAD = [  # (key=value as --set takes it, what the message must say)
    ("train.epochs=0", "an integer ≥ 1"), ("train.epochs=-1", "an integer ≥ 1"), ("retrain.epochs=-1", "an integer ≥ 0"),
    ("train.ckpt_every=0", "an integer ≥ 1"), ("retrain.ckpt_every=0", "≥ 1"),
    ("data.eval_batch_size=0", "≥ 1"), ("data.batch_size=0", "≥ 1"), ("data.img_size=0", "≥ 1"),
    ("search.generations=0", "≥ 1"), ("search.parents=0", "≥ 1"), ("search.population=0", "≥ 1"),
    ("search.max_tries=0", "≥ 1"), ("search.mutations=-1", "≥ 0"), ("search.mutation_prob=1.5", "≤ 1"),
    ("train.lr=nan", "finite number > 0"), ("train.lr=-0.1", "> 0"), ("train.lr=0", "> 0"),
    ("retrain.lr=inf", "finite"), ("train.weight_decay=-1", "≥ 0"), ("train.min_lr=nan", "finite"),
    ("train.warmup_epochs=-2", "≥ 0"), ("train.eval_every=-1", "≥ 0"),
    ("search.budget=[1]", "two finite numbers"), ("search.budget=[2,1]", "min ≤ max"),
    ("search.budget=[0,nan]", "two finite numbers"), ("search.budget=[-1,1]", "0 ≤ min"),
    ("search.budget=[a,b]", "two finite numbers"), ("search.budget=null", "two finite numbers"),
    ("device=foo", "auto, cpu, cuda or cuda:N"), ("device=cuda:x", "cuda:N"),
    ("data.mean=[0.5,0.5]", "3 finite numbers"), ("data.std=[0.2,0.2,0]", "3 finite positive numbers"),
    ("data.mean=[0.5,0.5,nan]", "3 finite numbers"), ("data.num_classes=1", "≥ 2"),
    ("data.interpolation=lanczos", "bicubic"), ("glora.ranks=[]", "non-empty list of positive integers"),
    ("glora.ranks=[0]", "positive integers"), ("glora.targets=[1]", "glob patterns"),
    ("retrain.init=best", "supernet, scratch"), ("data.task=../x", "task folder"), ("seed=-1", "≥ 0"),
    ("train.amp=null", "true or false"), ("data.cache_dir=''", "null or a non-empty string"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_line_naming_the_key(override, expected):
    cfg = load_config(str(DEMO), [override])
    with pytest.raises(UserError) as info:
        validate_config(cfg)
    key = override.split("=")[0]
    message = str(info.value)
    assert message.startswith(f"{key}=") and expected in message and f"--set {key}=" in message
    assert "\n" not in message


def test_no_task_is_an_error_not_outputs_none():
    cfg = load_config(None)
    assert cfg["output"] is None  # was outputs/None
    with pytest.raises(UserError, match=r"^data.task=None: expected the name of a task folder .*configs/vtab/dtd.yaml"):
        validate_config(cfg)


def test_unreadable_config_files_are_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data:\n  task: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.yaml: not UTF-8 text \(byte 17\); save it as UTF-8"):
        load_config(str(latin))
    with pytest.raises(UserError, match=f"{tmp_path} is a folder: give the path of a YAML file"):
        load_config(str(tmp_path))
    with pytest.raises(UserError, match="file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_flatten_names_nested_keys():
    flat = flatten({"train": {"lr": 1e-4}, "model": {"kwargs": {"depth": 2}, "name": "vit"}, "seed": 0})
    assert flat == {"train.lr": 1e-4, "model.kwargs.depth": 2, "model.name": "vit", "seed": 0}
    assert math.isnan(flatten({"a": {"b": float("nan")}})["a.b"])
