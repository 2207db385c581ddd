"""Checkpoints as pipeline.stages.train writes them: a training resumed from one ends as the uninterrupted one
did, and a checkpoint of another configuration is never resumed."""

from dataclasses import asdict

import pytest
import torch

from pipeline.data.class_folder import prepare
from pipeline.data.manifest import read_manifest
from pipeline.data.splits import load_split
from pipeline.finetune import checkpoint
from pipeline.finetune.checkpoint import TrainingState
from pipeline.finetune.loop import Callbacks, train_model
from pipeline.finetune.records import TIMING
from tests.conftest import data_config, tiny_params

CLASSES = ["blue", "green", "red"]


def run(params, train, val, **kwargs):
    history = []
    result = train_model(
        params,
        CLASSES,
        train,
        val,
        "test data",
        Callbacks(on_epoch=history.append, **kwargs.pop("callbacks", {})),
        **kwargs,
    )
    return result, [{k: v for k, v in asdict(r).items() if k not in TIMING} for r in history]


def test_a_training_resumed_mid_phase_ends_like_the_uninterrupted_one(image_folder, tmp_path):
    """Augmentation on: the checkpoint must carry torch's RNG state as well as the batch order."""
    prepare(data_config(image_folder), seed=0, out_dir=tmp_path / "prepared")
    rows = read_manifest(tmp_path / "prepared" / "manifest.csv")
    train, val = (load_split(rows, split, 32, 10**7, "memory") for split in ("train", "val"))
    params = tiny_params(
        **{
            "model.backbone": "resnet18",
            "model.weights": "none",
            "finetune.strategy": "lp-ft",
            "finetune.head_epochs": 1,
            "train.epochs": 3,
        }
    )
    assert params.train.augment.crop_scale_min < 1 and params.train.augment.hflip

    def save(state: TrainingState):
        checkpoint.save(state, "test", tmp_path / f"epoch-{state.epoch}.pt")

    uninterrupted, history = run(params, train, val, callbacks={"on_state": save})
    _, state = checkpoint.read(tmp_path / "epoch-2.pt")  # one epoch into the fine-tune phase
    assert (state.phase, state.phase_epoch, len(state.history)) == ("fine-tune", 1, 2)
    resumed, resumed_history = run(params, train, val, resume=state)
    assert resumed_history == history[2:]
    assert resumed.best.epoch == uninterrupted.best.epoch
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in uninterrupted.history]
    resumed_weights = resumed.model.state_dict()
    assert all(torch.equal(resumed_weights[k], v) for k, v in uninterrupted.model.state_dict().items())


def test_only_a_checkpoint_of_the_same_run_is_resumed(in_tmp_project, image_folder, capsys):
    prepare(data_config(image_folder), seed=0)
    params = tiny_params()
    state = TrainingState(1, "partial", 0, 1, {}, {}, {}, torch.zeros(1), None, [], 0.0)
    checkpoint.save(state, checkpoint.fingerprint(params))
    loaded = checkpoint.load(params)
    assert (loaded.epoch, loaded.phase, loaded.phase_index, loaded.run_id) == (1, "partial", 0, None)
    assert len(loaded.rng) == 1 and torch.equal(loaded.rng[0]["torch"], torch.get_rng_state())
    assert "resuming from models/checkpoint.pt: epoch 1 (partial) done" in capsys.readouterr().out
    others = (tiny_params(seed=1), tiny_params(**{"train.lr": 0.01}), tiny_params(**{"model.backbone": "resnet18"}))
    for other in others:
        assert checkpoint.load(other) is None
        assert "from another configuration" in capsys.readouterr().out
    assert checkpoint.load(tiny_params(**{"train.loader_workers": 2})) is not None  # how it runs, not what


@pytest.mark.parametrize(("phase_index", "expected"), [(0, 4), (1, 2), (2, 0)])
def test_epochs_done_skips_finished_phases_and_continues_the_current_one(phase_index, expected):
    state = TrainingState(3, "b", 1, 2, {}, {}, {}, torch.zeros(1), None, [], 0.0)
    assert state.epochs_done(phase_index, 4) == expected
