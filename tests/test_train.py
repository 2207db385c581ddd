import pytest
import torch

from pipeline import progress as progress_module
from pipeline.choice.trials import Trial, predicted
from pipeline.data.class_folder import prepare
from pipeline.data.manifest import read_manifest
from pipeline.data.splits import load_split
from pipeline.finetune.loop import Callbacks, Trained, train_model
from pipeline.finetune.phase import body_as_built
from pipeline.finetune.records import EpochRecord
from pipeline.model import features
from pipeline.model.backbones import build
from pipeline.model.features import FrozenFeatures
from pipeline.model.model_file import predict_probabilities
from tests.conftest import data_config, tiny_params

NO_AUGMENT = {"train.augment": {"hflip": False, "crop_scale_min": 1.0}}


def splits(folder, tmp_path, size=32, **data):
    prepare(data_config(folder, **data), seed=0, out_dir=tmp_path / "prepared")
    rows = read_manifest(tmp_path / "prepared" / "manifest.csv")
    return [load_split(rows, split, size, 10**7, "memory") for split in ("train", "val")]


def run(params, train, val, frozen=None, **model) -> tuple[Trained, list[EpochRecord]]:
    """Train through the pipeline's one entry point; a random-init ResNet-18 unless `model` says otherwise."""
    settings = {"backbone": "resnet18", "weights": "none"} | model
    params = params.model_copy(update={"model": params.model.model_copy(update=settings)})
    classes = [str(c) for c in range(len(set(train.labels.tolist())))]
    history = []
    callbacks = Callbacks(on_epoch=history.append)
    result = train_model(params, classes, train, val, "test data", callbacks, frozen=frozen)
    return result, history


def weights(result: Trained) -> dict:
    return result.model.state_dict()


def test_cached_feature_head_matches_training_through_the_frozen_backbone(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "head", "finetune.head_epochs": 3, "model.backbone": "resnet18"} | NO_AUGMENT
    cached, _ = run(tiny_params(**settings, **{"finetune.cache_features": True}), train, val)
    uncached, _ = run(tiny_params(**settings, **{"finetune.cache_features": False}), train, val)
    for key in ("head.weight", "head.bias"):
        torch.testing.assert_close(weights(cached)[key], weights(uncached)[key], atol=1e-5, rtol=1e-4)
    body_keys = [k for k in weights(cached) if k.startswith("body.")]
    assert all(torch.equal(weights(cached)[k], weights(uncached)[k]) for k in body_keys)


def test_runs_sharing_frozen_features_train_what_each_trains_alone(image_folder, tmp_path, monkeypatch):
    """compare's runs share one pass of the pretrained body over each image tensor; random-init bodies differ
    by seed, so theirs are passed per run."""
    train, val = splits(image_folder, tmp_path)
    runs = [("head", 0, "DEFAULT"), ("lp-ft", 0, "DEFAULT"), ("head", 1, "DEFAULT"), ("lp-ft", 1, "DEFAULT")]
    runs += [("head", 0, "none"), ("head", 1, "none")]

    def each(frozen):
        return [
            run(
                tiny_params(**{"finetune.strategy": strategy, "seed": seed} | NO_AUGMENT),
                train,
                val,
                frozen,
                backbone="efficientnet_lite0",
                weights=weights,
            )
            for strategy, seed, weights in runs
        ]

    alone = each(None)
    passes, extract = [], features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *args: passes.append(len(args[1])) or extract(*args))
    shared = each(FrozenFeatures())
    # the pretrained body's: train and val once for four runs; the random-init bodies': train and val per run
    assert passes == [len(train.labels), len(val.labels)] * 3
    for (result_alone, history_alone), (result_shared, history_shared) in zip(alone, shared, strict=True):
        assert [r.val_accuracy for r in history_shared] == [r.val_accuracy for r in history_alone]
        assert all(torch.equal(value, weights(result_alone)[key]) for key, value in weights(result_shared).items())


def test_runs_whose_body_did_not_train_are_scored_from_the_shared_pass(image_folder, tmp_path, monkeypatch):
    """compare predicts with the head of a run that trained nothing else on the shared features of its body:
    the classes the whole model gives, with one pass of the pretrained body for all such runs."""
    train, val = splits(image_folder, tmp_path)
    frozen, trials = FrozenFeatures(), []
    for strategy, seed, weights in [
        ("head", 0, "DEFAULT"),
        ("head", 1, "DEFAULT"),
        ("lp-ft", 0, "DEFAULT"),
        ("head", 0, "none"),
    ]:
        model = {"backbone": "efficientnet_lite0", "weights": weights}
        params = tiny_params(
            **{"finetune.strategy": strategy, "seed": seed} | {f"model.{k}": v for k, v in model.items()}
        )
        result, _ = run(params, train, val, frozen, **model)
        trials.append(Trial(strategy, params, result, 0.0, "no run"))
    assert [body_as_built(t.params, t.trained.plan) for t in trials] == [True, True, False, True]
    passes, extract = [], features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *args: passes.append(len(args[1])) or extract(*args))
    unseen = torch.flip(val.images, dims=[0])  # a tensor no run passed
    for trial in trials:
        whole_model = predict_probabilities(trial.trained.model, unseen).argmax(1)
        assert torch.equal(predicted(trial, unseen, frozen), whole_model)
    # the pretrained body's features once for both head runs, the random-init body's for its own run;
    # lp-ft's body trained, so its whole model predicts
    assert passes == [len(unseen)] * 2


def test_training_is_reproducible_from_the_seed_and_keeps_the_best_epoch(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    params = tiny_params(**{"finetune.strategy": "lp-ft", "train.epochs": 2, "model.backbone": "resnet18"})
    first, history = run(params, train, val)
    second, _ = run(params, train, val)
    assert all(torch.equal(weights(first)[k], weights(second)[k]) for k in weights(first))
    assert len(history) == params.finetune.head_epochs + params.train.epochs
    best = first.best
    assert best.val_accuracy == max(r.val_accuracy for r in history)
    assert best.epoch == next(r.epoch for r in history if r.val_accuracy == best.val_accuracy)
    assert first.card.classes == ["0", "1", "2"] and first.card.strategy == "lp-ft" and first.card.image_size == 32
    # the best epoch's validation classes, as its validation pass gave them: what compare's paired test uses
    assert (first.val_predicted == val.labels).float().mean().item() == pytest.approx(best.val_accuracy)
    assert torch.equal(first.val_predicted, predict_probabilities(first.model, val.images).argmax(1))


def test_pretrained_features_beat_random_ones_on_the_default_data(animal_shape_folder, tmp_path):
    train, val = splits(animal_shape_folder, tmp_path, size=64, max_per_class=40, val_fraction=0.25, test_fraction=0.1)
    params = tiny_params(**{"finetune.strategy": "head", "finetune.head_epochs": 30, "train.batch_size": 32})
    pretrained, _ = run(params, train, val, weights="DEFAULT", backbone="efficientnet_lite0")
    random_init, _ = run(params, train, val, weights="none", backbone="efficientnet_lite0")
    assert pretrained.best.val_accuracy >= 0.7
    assert pretrained.best.val_accuracy > random_init.best.val_accuracy + 0.2


def test_batchnorm_policies_keep_or_update_the_statistics_they_say(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "finetune.unfreeze_blocks": 1, "model.backbone": "resnet18"}
    before = build("resnet18", "none", 3).model.state_dict()  # build() of resnet18 sets BN stats to 0 / 1
    frozen, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "frozen"}), train, val)
    drifting, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "train"}), train, val)
    kept, _ = run(tiny_params(**settings, **{"finetune.batchnorm": "pretrained"}), train, val)
    early, late = "body.layer1.0.bn1.running_mean", "body.layer4.0.bn1.running_mean"
    assert torch.equal(weights(frozen)[early], before[early])
    assert not torch.equal(weights(frozen)[late], before[late])
    assert torch.equal(weights(kept)[late], before[late])  # tuned, yet on pretrained statistics
    assert not torch.equal(weights(kept)["body.layer4.0.bn1.weight"], before["body.layer4.0.bn1.weight"])
    assert not torch.equal(weights(drifting)[early], before[early])


@pytest.mark.slow  # inductor compiles C++ kernels for the forward, backward and eval graphs: ~1-2 min
def test_compiled_training_matches_eager(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "finetune.unfreeze_blocks": 1, "model.backbone": "resnet18"}
    eager, eager_history = run(tiny_params(**settings), train, val)
    compiled, compiled_history = run(tiny_params(**settings, **{"train.compile": True}), train, val)
    assert [r.train_loss for r in compiled_history] == pytest.approx([r.train_loss for r in eager_history], rel=1e-3)
    assert compiled.best.val_accuracy == eager.best.val_accuracy
    for key, value in weights(eager).items():
        torch.testing.assert_close(weights(compiled)[key], value, atol=1e-4, rtol=1e-3)
    assert not any(key.startswith("_orig_mod") for key in weights(compiled))  # the model's own names


def test_loader_workers_change_nothing_but_speed(image_folder, tmp_path):
    train, val = splits(image_folder, tmp_path)
    settings = {"finetune.strategy": "partial", "model.backbone": "resnet18", "train.epochs": 2}
    in_process, history = run(tiny_params(**settings), train, val)
    with_workers, workers_history = run(tiny_params(**settings, **{"train.loader_workers": 2}), train, val)
    assert [r.train_loss for r in workers_history] == [r.train_loss for r in history]
    assert all(torch.equal(value, weights(with_workers)[key]) for key, value in weights(in_process).items())


def test_a_long_epoch_reports_its_images_as_it_goes(image_folder, tmp_path, monkeypatch, capsys):
    """A log without a terminal (DVC's, CI's) gets lines inside an epoch, not only one when it ends."""
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    train, val = splits(image_folder, tmp_path)
    run(tiny_params(**{"finetune.strategy": "full"}), train, val)
    out = capsys.readouterr().out
    assert f"training: {len(train.labels):,} of {len(train.labels):,} img" in out
    assert f"validating: {len(val.labels):,} of {len(val.labels):,} img" in out
