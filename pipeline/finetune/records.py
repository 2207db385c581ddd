"""What training records: each epoch's figures, and the best epoch with its weights."""

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class EpochRecord:
    """One epoch, as MLflow's per-epoch metrics show it; metrics/train_history.csv holds HISTORY_COLUMNS."""

    epoch: int  # over all phases, from 1
    phase: str
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float
    images_per_second: float

    def line(self, where: str) -> str:
        """The epoch in one line, for a log without progress bars."""
        return (
            f"{where} (epoch {self.epoch}): train loss {self.train_loss:.4f} "
            f"accuracy {self.train_accuracy:.4f}, val loss {self.val_loss:.4f} "
            f"accuracy {self.val_accuracy:.4f}, {self.epoch_seconds:.1f} s"
        )


# The git-tracked history holds what the same code, data and machine give again; an epoch's time differs every
# run, and would leave a fresh clone's `make run` with a modified file. MLflow keeps the times.
TIMING = ("epoch_seconds", "images_per_second")
HISTORY_COLUMNS = tuple(field.name for field in fields(EpochRecord) if field.name not in TIMING)


@dataclass
class BestEpoch:
    """The epoch with the best validation accuracy so far, its weights and its class of each validation image."""

    record: EpochRecord
    state_dict: dict
    val_predicted: torch.Tensor | None  # None in a checkpoint that predates it
