"""Few-shot and domain generalization through the three stages, and the two protocols side by side
on one task, each labelled (tiny ViT, datasets the tests write in NOAH's layouts)."""
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_script
from engine.run import parse_args
from glora.errors import UserError
from noah import build_dg, build_fewshot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import summarize  # noqa: E402

pytestmark = pytest.mark.slow


def run(name, *args):
    run_script(name, parse_args([str(a) for a in args]))


def pipeline(*args):
    for name in ("train", "search", "retrain"):
        run(name, *args)


def experiment(path, data):
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["data"].update(data, img_size=16)
    cfg["model"]["kwargs"]["img_size"] = 16
    path.write_text(yaml.safe_dump(cfg))
    return path


def results(folder):
    return json.loads((folder / "retrain" / "results.json").read_text())


def test_fewshot_protocols_side_by_side_and_zero_epochs(tmp_path):
    build_fewshot(tmp_path / "data", shots=(2,), seeds=(0,))
    exp = experiment(tmp_path / "fs.yaml", {"root": str(tmp_path / "data"), "task": "oxford-pets",
                                            "benchmark": "fewshot", "shots": 2})
    grid = tmp_path / "grid"
    honest, release = grid / "honest" / "oxford-pets" / "shot2" / "seed0", grid / "release-2023" / "oxford-pets" / "shot2" / "seed0"
    pipeline(exp, "--set", f"output={honest}")
    pipeline(exp, ROOT / "configs" / "protocols" / "release-2023.yaml", "--set", f"output={release}")

    h, r = results(honest), results(release)
    assert (h["protocol"], h["test_selected"], h["shots"], h["shot_seed"]) == ("honest", False, 2, 0)
    assert (r["protocol"], r["test_selected"], r["epochs"]) == ("release-2023", True, 0)
    assert r["test_acc"] == r["test_acc1_search"]  # the best candidate's test accuracy, nothing retrained
    supernet = json.loads((release / "supernet" / "summary.json").read_text())
    assert supernet["trained_on"] == "train800val200"
    best = yaml.safe_load((release / "search" / "best_subnet.yaml").read_text())
    assert best["scored_on"] == "test" and "test_acc1" in best and "val_acc1" not in best
    assert yaml.safe_load((honest / "search" / "best_subnet.yaml").read_text())["scored_on"] == "val200"

    md = summarize.write_summary(grid)[0]
    assert "| honest | oxford-pets | 2 | honest | fewshot |" in md
    assert "| release-2023 | oxford-pets | 2 | release-2023 (test-selected) | fewshot |" in md
    assert "release-2023: test-selected" in md
    card = (release / "retrain" / "hub" / "README.md").read_text()
    assert "test-selected" in card

    # lineage: an honest search refuses the supernet that trained on val200 under release-2023
    with pytest.raises(UserError, match=r"protocol \('release-2023' → 'honest'\)"):
        run("search", exp, "--set", f"output={release}", "--set", "search.generations=1")

    # retrain.epochs 0 under the honest protocol: the subnet with the supernet's weights; resumable,
    # and a resume with other epochs is refused
    zero = ["--set", f"output={honest}", "--set", "retrain.epochs=0"]
    run("retrain", exp, *zero)
    first = results(honest)
    assert first["epochs"] == 0 and first["protocol"] == "honest"
    run("retrain", exp, *zero, "--resume")
    assert results(honest)["test_acc"] == first["test_acc"]
    with pytest.raises(UserError, match=r"retrain.epochs \(0 → 1\)"):
        run("retrain", exp, "--set", f"output={honest}", "--set", "retrain.epochs=1", "--resume")


def test_domain_generalization_one_model_five_test_sets(tmp_path):
    build_dg(tmp_path / "dg", shots=2)
    exp = experiment(tmp_path / "dg.yaml", {
        "root": str(tmp_path / "dg"), "task": "imagenet", "benchmark": "dg", "shots": 2, "shot_seed": 0,
        "test_sets": ["imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"]})
    out = tmp_path / "out"
    pipeline(exp, "--set", f"output={out}")
    r = results(out)
    sets = r["test_sets"]
    assert list(sets) == ["imagenet", "imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"]
    assert sets["imagenet"]["test_acc"] == r["test_acc_merged"]
    assert [s["restricted"] for s in sets.values()] == [False, False, False, True, True]
    assert sets["imagenet-adversarial"]["classes"] == "logits restricted to the 2 classes present"
    assert sets["imagenetv2"]["classes"] == "all 1000" and r["protocol"] == "honest"
    md = summarize.write_summary(out)[0]
    assert "| imagenet | imagenet-rendition | 1 |" in md and "restricted to the 2 classes present" in md
