"""Checkpoints as pipeline.train writes them: a fit resumed from one ends as the uninterrupted fit did,
and a checkpoint of another configuration is never resumed."""

import pytest
import torch

from pipeline import checkpoint
from pipeline.backbones import build
from pipeline.config import DataConfig
from pipeline.data import load_split, read_manifest
from pipeline.prepare import prepare
from pipeline.train import fit, seed_everything
from tests.conftest import tiny_params

TIMING = ("epoch_seconds", "images_per_second")


def run(params, train, val, **kwargs):
    seed_everything(params)
    backbone = build("resnet18", "none", 3)
    history = []
    best = fit(params, backbone, train, val, lambda record, *_: history.append(record), **kwargs)
    return best, [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def test_a_fit_resumed_mid_phase_ends_like_the_uninterrupted_one(image_folder, tmp_path):
    """Augmentation on: the checkpoint must carry torch's RNG state as well as the batch order."""
    prepare(DataConfig(source=str(image_folder)), seed=0, out_dir=tmp_path / "prepared")
    rows = read_manifest(tmp_path / "prepared" / "manifest.csv")
    train, val = (load_split(rows, split, 32, 10**7) for split in ("train", "val"))
    params = tiny_params(**{"finetune.strategy": "lp-ft", "finetune.head_epochs": 1, "train.epochs": 3})
    assert params.train.augment.crop_scale_min < 1 and params.train.augment.hflip

    def save(state):
        checkpoint.save(state, tmp_path / f"epoch-{state['epoch']}.pt")

    uninterrupted, history = run(params, train, val, save=save)
    state = torch.load(tmp_path / "epoch-2.pt", weights_only=True)  # one epoch into the fine-tune phase
    assert (state["phase"], state["phase_epoch"]) == ("fine-tune", 1)
    resumed, resumed_history = run(params, train, val, resume=state)
    assert resumed_history == history[2:]
    assert resumed["epoch"] == uninterrupted["epoch"]
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in uninterrupted["state_dict"].items())


def test_only_a_checkpoint_of_the_same_run_is_resumed(in_tmp_project, image_folder, capsys):
    prepare(DataConfig(source=str(image_folder)), seed=0)
    params = tiny_params()
    checkpoint.save({"epoch": 1, "phase": "partial", "fingerprint": checkpoint.fingerprint(params)})
    assert checkpoint.load(params)["epoch"] == 1
    assert "resuming from models/checkpoint.pt: epoch 1 (partial) done" in capsys.readouterr().out
    others = (tiny_params(seed=1), tiny_params(**{"train.lr": 0.01}), tiny_params(**{"model.backbone": "resnet18"}))
    for other in others:
        assert checkpoint.load(other) is None
        assert "from another configuration" in capsys.readouterr().out


@pytest.mark.parametrize(("phase_index", "expected"), [(0, 4), (1, 2), (2, 0)])
def test_epochs_done_skips_finished_phases_and_continues_the_current_one(phase_index, expected):
    resume = {"phase_index": 1, "phase_epoch": 2}
    assert checkpoint.epochs_done(resume, phase_index, 4) == expected
    assert checkpoint.epochs_done(None, phase_index, 4) == 0
