"""Every config value is checked before any work: one rule per key, one line naming the key and the fix."""
import math

import pytest
import yaml

from engine import keys
from engine.config import DEFAULTS, flatten, load_config, validate_config
from engine.run import execute, parse_args
from glora.errors import UserError

DEMO = DEFAULTS.parent / "demo.yaml"


def test_defaults_yaml_is_the_declaration_written_out():
    """configs/defaults.yaml is what `python -m engine.keys --write` writes: every declared key, its default and help."""
    assert DEFAULTS.read_text() == keys.defaults_yaml(), "run: python -m engine.keys --write"
    assert yaml.safe_load(DEFAULTS.read_text()) == keys.defaults() == load_config(None)
    assert all(key.help and "\n" not in key.help for key in keys.KEYS.values())  # one line of help each


def test_help_config_lists_every_key_with_its_default_and_help(capsys):
    """What `python train.py --help-config` (search.py, retrain.py alike) prints, and exits 0."""
    with pytest.raises(SystemExit) as done:
        parse_args(["--help-config"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for key in keys.KEYS.values():
        assert f"\n{key.name} = " in out and key.help in out
    assert "\ndata.eval_batch_size = 256   [supernet, search, retrain; --resume may change it]\n" in out
    assert "\nretrain.lr = 0.0001   [retrain]\n" in out


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


def test_a_value_of_the_wrong_type_is_named_with_what_fits():
    for override, expected in (("data.batch_size=abc", "data.batch_size='abc': expected an integer ≥ 1"),
                               ("train.lr=[1]", "train.lr=[1]: expected a finite number > 0"),
                               ("data.cache=yes please", "data.cache='yes please': expected true or false")):
        with pytest.raises(UserError, match=rf"^{override.split('=')[0]}=") as info:
            validate_config(load_config(str(DEMO), [override]))
        assert str(info.value).startswith(expected) and " a int" not in str(info.value)
    # what YAML 1.1 leaves a string, a config reads as the number it is
    assert load_config(str(DEMO), ["train.lr=1e-3", "model.kwargs.drop_path_rate=1e-1"])["train"]["lr"] == 1e-3
    assert load_config(str(DEMO), ["model.kwargs.drop_path_rate=1e-1"])["model"]["kwargs"]["drop_path_rate"] == 0.1


@pytest.mark.parametrize("override, expected", [
    ("glora.ranks=[4,8", "--set 'glora.ranks=[4,8': invalid YAML at line 1, column 5: expected ',' or ']', but got "
                         "'<stream end>'"),
    ("output=", "--set 'output=': no value after '='; give one (null for none: --set output=null)"),
    ("retrain.uniform={A: vector, A: none}", "--set 'retrain.uniform={A: vector, A: none}': line 1: 'A' is given twice "
                                             "in one mapping (first on line 1)"),
])
def test_a_malformed_set_is_one_line(override, expected):
    with pytest.raises(UserError) as info:
        load_config(str(DEMO), [override])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_a_malformed_set_on_the_command_line_is_one_error_line(capsys):
    args = parse_args([str(DEMO), "--set", "glora.ranks=[4,8"])
    assert execute("supernet", lambda stage: None, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set 'glora.ranks=[4,8': invalid YAML") and err.count("\n") == 1


def test_a_key_or_section_given_twice_in_a_config_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  task: dtd\n  batch_size: 8\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match=rf"^{path}: line 6: 'lr' is given twice in one mapping \(first on line 5\): "
                                        r"YAML would keep the last silently; keep one$"):
        load_config(str(path))
    path.write_text("data:\n  task: dtd\ntrain: {lr: 0.1}\ndata:\n  batch_size: 8\n")
    with pytest.raises(UserError, match=r"line 4: 'data' is given twice in one mapping \(first on line 1\)"):
        load_config(str(path))


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
