"""Resumable training: after every epoch, the state that lets a killed run continue exactly.

    python -m pipeline.train    # killed (SIGTERM, SIGKILL, a lost machine)? run it again: it resumes

models/checkpoint.pt holds the epoch and phase, the model, optimizer and scheduler states, the
batch-order generator, every rank's torch RNG state (dropout), the best epoch so far
and the history, so a resumed run ends with the same weights and metrics as an uninterrupted one
with the same seed. It is written atomically (a kill never leaves half a checkpoint), is not a DVC
output (DVC would delete it before rerunning the stage, and would take its absence in a fresh clone
for a change), and is deleted once the stage has written its outputs.

A checkpoint is only resumed by the same run: its fingerprint covers the train stage's params,
the prepared data's manifest, the number of processes and the MLflow store; anything else
starts afresh (delete the file to force that).
"""

import hashlib
import json
from pathlib import Path

import torch

from pipeline import distributed, tracking
from pipeline.artifacts import atomic_path
from pipeline.config import Params
from pipeline.prepare import MANIFEST

CHECKPOINT_FILE = tracking.RUN_FILE.parent / "checkpoint.pt"
# The params the train stage depends on (dvc.yaml), less those that only set how it runs.
TRAIN_PARAMS = {"seed": True, "data": {"max_image_pixels"}, "model": True, "finetune": True, "train": True}


def fingerprint(params: Params, manifest: Path = MANIFEST) -> str:
    """What a checkpoint must match to be resumed."""
    identity = {
        "params": params.model_dump(mode="json", include=TRAIN_PARAMS),
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "processes": distributed.size(),
        "tracking_uri": tracking.tracking_uri(),
        "experiment": params.mlflow.experiment,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(states: list[dict]) -> None:
    """This rank's RNG state from the checkpoint."""
    state = states[distributed.rank()]
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def save(state: dict, path: Path = CHECKPOINT_FILE) -> None:
    """Called by every rank (their RNG states are gathered); rank 0 writes."""
    states = distributed.gather(rng_state())
    if distributed.is_main():
        with atomic_path(path) as partial:
            torch.save(state | {"rng": states}, partial)


def load(params: Params, path: Path = CHECKPOINT_FILE) -> dict | None:
    """The checkpoint to resume from, or None (none, or one from another run)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint(params):
        if distributed.is_main():
            print(f"{path} is from another configuration, data or number of processes: starting afresh")
        return None
    if distributed.is_main():
        print(f"resuming from {path}: epoch {state['epoch']} ({state['phase']}) done")
    return state


def epochs_done(resume: dict | None, phase_index: int, phase_epochs: int) -> int:
    """How many epochs of phase `phase_index` the checkpoint already holds."""
    if resume is None or phase_index > resume["phase_index"]:
        return 0
    return resume["phase_epoch"] if phase_index == resume["phase_index"] else phase_epochs
