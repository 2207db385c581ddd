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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pipeline.atomic import atomic_path
from pipeline.config import Params, read_yaml
from pipeline.data.manifest import fingerprint as manifest_fingerprint
from pipeline.finetune import distributed
from pipeline.finetune.records import BestEpoch, EpochRecord
from pipeline.paths import CHECKPOINT_FILE, DVC_FILE, MANIFEST
from pipeline.tracking import store

FORMAT = 2  # of the saved state: a checkpoint of another format is not resumed


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
    best: BestEpoch | None
    history: list[EpochRecord]  # every epoch's so far
    seconds: float  # training time so far, across resumes
    rng: list[dict] = field(default_factory=list)  # every rank's torch RNG states (dropout), set by save()
    run_id: str | None = None  # the MLflow run to continue

    def epochs_done(self, phase_index: int, phase_epochs: int) -> int:
        """How many epochs of phase `phase_index` this state already holds."""
        if phase_index > self.phase_index:
            return 0
        return self.phase_epoch if phase_index == self.phase_index else phase_epochs


def train_params(dvc_file: Path = DVC_FILE) -> list[str]:
    """The params the train stage depends on, as dvc.yaml lists them (`section` or `section.key`)."""
    if not dvc_file.is_file():
        raise FileNotFoundError(f"{dvc_file} not found: run the train stage from the project root")
    return read_yaml(dvc_file)["stages"]["train"]["params"]


def fingerprint(params: Params, manifest: Path = MANIFEST) -> str:
    """What a checkpoint must match to be resumed."""
    settings = params.model_dump(mode="json")
    chosen = {}
    for dotted in train_params():
        value = settings
        for part in dotted.split("."):
            value = value[part]
        chosen[dotted] = value
    identity = {
        "format": FORMAT,
        "params": chosen,
        "manifest": manifest_fingerprint(manifest),
        "processes": distributed.size(),
        "tracking_uri": store.tracking_uri(),
        "experiment": params.experiment(),
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
        best = state.best and {
            "record": asdict(state.best.record),
            "state_dict": state.best.state_dict,
            "val_predicted": state.best.val_predicted,
        }
        history = [asdict(record) for record in state.history]  # plain containers: loaded with weights_only
        with atomic_path(path) as partial:
            torch.save(
                fields | {"best": best, "history": history, "rng": states, "fingerprint": run_fingerprint}, partial
            )


def read(path: Path) -> tuple[str | None, TrainingState]:
    """The fingerprint a checkpoint was saved with, and its state."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved_fingerprint, best = saved.pop("fingerprint", None), saved["best"]
    if best is not None:
        best = BestEpoch(EpochRecord(**best["record"]), best["state_dict"], best["val_predicted"])
    history = [EpochRecord(**record) for record in saved["history"]]
    return saved_fingerprint, TrainingState(**saved | {"best": best, "history": history})


def load(params: Params, path: Path = CHECKPOINT_FILE) -> TrainingState | None:
    """The state to resume from, or None (no checkpoint, or one from another run)."""
    if not path.is_file():
        return None
    saved_fingerprint, state = read(path)
    if saved_fingerprint != fingerprint(params):
        if distributed.is_main():
            print(f"{path} is from another configuration, data or number of processes: starting afresh")
        return None
    if distributed.is_main():
        print(f"resuming from {path}: epoch {state.epoch} ({state.phase}) done")
    return state
