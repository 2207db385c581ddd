import pytest
import torch

from pipeline.backbones import build
from pipeline.config import DataConfig
from pipeline.data import load_split, read_manifest
from pipeline.prepare import prepare
from pipeline.train import fit, seed_everything
from tests.conftest import tiny_params

NO_AUGMENT = {"train.augment": {"hflip": False, "crop_scale_min": 1.0}}


def splits(folder, tmp_path, size=32, **data):
    prepare(DataConfig(source=str(folder), **data), seed=0, out_dir=tmp_path / "prepared")
    rows = read_manifest(tmp_path / "prepared" / "manifest.csv")
    return [load_split(rows, split, size, 10**7) for split in ("train", "val")]


def run(params, train, val, weights="none", backbone_name="resnet18"):
    seed_everything(params)
    backbone = build(backbone_name, weights, len(set(train.labels.tolist())))
    history = []
    best = fit(params, backbone, train, val, on_epoch=lambda record, model, optimizer: history.append(record))
    return best, history


def test_cached_feature_head_matches_training_through_the_frozen_backbone(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "head", "finetune.head_epochs": 3, "model.backbone": "resnet18"} | NO_AUGMENT
    cached, _ = run(tiny_params(**settings, **{"finetune.cache_features": True}), train, val)
    uncached, _ = run(tiny_params(**settings, **{"finetune.cache_features": False}), train, val)
    for key in ("head.weight", "head.bias"):
        torch.testing.assert_close(cached["state_dict"][key], uncached["state_dict"][key], atol=1e-5, rtol=1e-4)
    body_keys = [k for k in cached["state_dict"] if k.startswith("body.")]
    assert all(torch.equal(cached["state_dict"][k], uncached["state_dict"][k]) for k in body_keys)


def test_training_is_reproducible_from_the_seed_and_keeps_the_best_epoch(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    params = tiny_params(**{"finetune.strategy": "lp-ft", "train.epochs": 2, "model.backbone": "resnet18"})
    first, history = run(params, train, val)
    second, _ = run(params, train, val)
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    assert len(history) == params.finetune.head_epochs + params.train.epochs
    assert first["val_accuracy"] == max(r["val_accuracy"] for r in history)
    assert first["epoch"] == next(r["epoch"] for r in history if r["val_accuracy"] == first["val_accuracy"])


def test_pretrained_features_beat_random_ones_on_the_default_data(animal_shape_folder, tmp_path):
    train, val = splits(animal_shape_folder, tmp_path, size=64, max_per_class=40, val_fraction=0.25, test_fraction=0.1)
    params = tiny_params(**{"finetune.strategy": "head", "finetune.head_epochs": 30, "train.batch_size": 32})
    pretrained, _ = run(params, train, val, weights="DEFAULT", backbone_name="efficientnet_lite0")
    random_init, _ = run(params, train, val, weights="none", backbone_name="efficientnet_lite0")
    assert pretrained["val_accuracy"] >= 0.7
    assert pretrained["val_accuracy"] > random_init["val_accuracy"] + 0.2


def test_batchnorm_policies_keep_or_update_the_statistics_they_say(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "finetune.unfreeze_blocks": 1, "model.backbone": "resnet18"}
    before = build("resnet18", "none", 3).model.state_dict()  # build() of resnet18 sets BN stats to 0 / 1
    frozen, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "frozen"}), train, val)
    drifting, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "train"}), train, val)
    kept, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "pretrained"}), train, val)
    early, late = "body.layer1.0.bn1.running_mean", "body.layer4.0.bn1.running_mean"
    assert torch.equal(frozen["state_dict"][early], before[early])
    assert not torch.equal(frozen["state_dict"][late], before[late])
    assert torch.equal(kept["state_dict"][late], before[late])  # tuned, yet on pretrained statistics
    assert not torch.equal(kept["state_dict"]["body.layer4.0.bn1.weight"], before["body.layer4.0.bn1.weight"])
    assert not torch.equal(drifting["state_dict"][early], before[early])


@pytest.mark.slow  # inductor compiles C++ kernels for the forward, backward and eval graphs: ~1-2 min
def test_compiled_training_matches_eager(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "finetune.unfreeze_blocks": 1, "model.backbone": "resnet18"}
    eager, eager_history = run(tiny_params(**settings), train, val)
    compiled, compiled_history = run(tiny_params(**settings, **{"train.compile": True}), train, val)
    assert [r["train_loss"] for r in compiled_history] == pytest.approx(
        [r["train_loss"] for r in eager_history], rel=1e-3
    )
    assert compiled["val_accuracy"] == eager["val_accuracy"]
    for key, value in eager["state_dict"].items():
        torch.testing.assert_close(compiled["state_dict"][key], value, atol=1e-4, rtol=1e-3)
    assert not any(key.startswith("_orig_mod") for key in compiled["state_dict"])  # the model's own names


def test_loader_workers_change_nothing_but_speed(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "model.backbone": "resnet18", "train.epochs": 2}
    in_process, history = run(tiny_params(**settings), train, val)
    with_workers, workers_history = run(tiny_params(**settings, **{"train.loader_workers": 2}), train, val)
    assert [r["train_loss"] for r in workers_history] == [r["train_loss"] for r in history]
    assert all(torch.equal(value, with_workers["state_dict"][key]) for key, value in in_process["state_dict"].items())
