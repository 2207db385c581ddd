"""Resumable training: after every epoch, the state that lets a killed run continue exactly.

The state (`TrainingState`) is written atomically to models/checkpoint.pt, which is not a DVC output
(DVC would delete it before rerunning the stage) and is deleted once the stage has written its
outputs. A resumed run ends with the same weights and metrics as an uninterrupted one with the same
seed. It is only resumed by the same run: its fingerprint covers the train stage's params, the
prepared manifest, the number of processes and the MLflow store; anything else starts afresh.
"""

import dataclasses
import hashlib
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import distributed, tracking
from pipeline.atomic import atomic_path
from pipeline.config import Params
from pipeline.manifest import fingerprint as manifest_fingerprint
from pipeline.paths import CHECKPOINT_FILE, MANIFEST

# The params the train stage depends on (dvc.yaml's train `params`; a test keeps the two equal).
TRAIN_PARAMS = (
    "seed",
    "data.max_image_pixels",
    "model",
    "finetune",
    "train.epochs",
    "train.batch_size",
    "train.image_size",
    "train.optimizer",
    "train.lr",
    "train.weight_decay",
    "train.warmup_epochs",
    "train.label_smoothing",
    "train.device",
    "train.deterministic",
    "train.compile",
    "train.augment",
)
# Tests set it to N to have the run stop itself (SIGKILL) right after epoch N's checkpoint is written:
# a kill at a known point, instead of a race between the test's signal and the training loop.
KILL_AFTER_EPOCH = "TRANSFERLAB_KILL_AFTER_EPOCH"


@dataclass
class TrainingState:
    """Where a training stands after an epoch: enough to continue it bit for bit."""

    epoch: int  # epochs done, over all phases
    phase: str
    phase_index: int
    phase_epoch: int  # epochs done in this phase
    model: dict  # state dicts
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor  # the batch order's generator state
    best: dict  # the best epoch's record, its weights under "state_dict", its validation classes under "val_predicted"
    history: list[dict]  # every epoch's record so far
    seconds: float  # training time so far, across resumes
    rng: list[dict] = field(default_factory=list)  # every rank's torch RNG states (dropout), set by save()
    run_id: str | None = None  # the MLflow run to continue

    def epochs_done(self, phase_index: int, phase_epochs: int) -> int:
        """How many epochs of phase `phase_index` this state already holds."""
        if phase_index > self.phase_index:
            return 0
        return self.phase_epoch if phase_index == self.phase_index else phase_epochs


def fingerprint(params: Params, manifest: Path = MANIFEST) -> str:
    """What a checkpoint must match to be resumed."""
    settings = params.model_dump(mode="json")
    chosen = {}
    for dotted in TRAIN_PARAMS:
        value = settings
        for part in dotted.split("."):
            value = value[part]
        chosen[dotted] = value
    identity = {
        "params": chosen,
        "manifest": manifest_fingerprint(manifest),
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


def save(state: TrainingState, run_fingerprint: str, path: Path = CHECKPOINT_FILE) -> None:
    """Called by every rank (their RNG states are gathered); rank 0 writes."""
    states = distributed.gather(rng_state())
    if distributed.is_main():
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}  # asdict would copy tensors
        with atomic_path(path) as partial:
            torch.save(fields | {"rng": states, "fingerprint": run_fingerprint}, partial)
    if os.environ.get(KILL_AFTER_EPOCH) == str(state.epoch):
        distributed.barrier()  # every rank has its share of the checkpoint written
        os.kill(os.getpid(), signal.SIGKILL)


def load(params: Params, path: Path = CHECKPOINT_FILE) -> TrainingState | None:
    """The state to resume from, or None (no checkpoint, or one from another run)."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.pop("fingerprint", None) != fingerprint(params):
        if distributed.is_main():
            print(f"{path} is from another configuration, data or number of processes: starting afresh")
        return None
    state = TrainingState(**saved)
    if distributed.is_main():
        print(f"resuming from {path}: epoch {state.epoch} ({state.phase}) done")
    return state
