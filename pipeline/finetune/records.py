"""What training records: each epoch's figures, and the best epoch with its weights."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EpochRecord:
    """One epoch, as metrics/train_history.csv and MLflow's per-epoch metrics show it (in this column order)."""

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


@dataclass
class BestEpoch:
    """The epoch with the best validation accuracy so far, its weights and its class of each validation image."""

    record: EpochRecord
    state_dict: dict
    val_predicted: torch.Tensor | None  # None in a checkpoint that predates it
