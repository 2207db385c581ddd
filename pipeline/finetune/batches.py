"""Batches of the uint8 images held in memory (pipeline.data.manifest), on the training device.

Each image's augmentation is drawn from its own seed (run seed, epoch, index), so an image comes
out the same whichever process makes it: the main process, any of N DataLoader workers, or any
rank of a torchrun job (which takes its share of every global batch, pipeline/finetune/distributed.py). The
images travel to the device as uint8, a quarter of float32's bytes (from pinned memory on CUDA);
the model normalises them there.
"""

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from pipeline.finetune import distributed


class AugmentedImages(Dataset):
    """(image, label) by key (epoch, index); the image augmented from that key's own seed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: v2.Transform | None, seed: int):
        self.images, self.labels, self.augment, self.seed = images, labels, augment, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image = self.images[index]
        if self.augment is not None:
            # torchvision's random transforms draw from torch's default CPU generator: seed it for this
            # image alone, then put it back (torch.manual_seed would also reseed every device, 100x slower).
            generator = torch.default_generator
            state = generator.get_state()
            generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
            try:
                image = self.augment(image)
            finally:
                generator.set_state(state)
        return image, self.labels[index]

    def collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch, an empty one too: a process's share of a last, small global batch may hold nothing."""
        if not items:
            return torch.empty((0, *self.images.shape[1:]), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return default_collate(items)


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """'auto': none on CPU, where workers would take cores from the training step; else up to 8."""
    if setting != "auto":
        return int(setting)
    return 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))


class EpochBatches:
    """The batch sampler: this process's share of each global batch of `batch_size` keys (epoch,
    index) of the epoch set last. It runs in the main process, so persistent workers see each epoch."""

    def __init__(self, batch_size: int):
        self.batch_size, self.keys = batch_size, []

    def __iter__(self):
        for start in range(0, len(self.keys), self.batch_size):
            yield distributed.share(self.keys[start : start + self.batch_size])

    def __len__(self) -> int:
        return -(-len(self.keys) // self.batch_size)


class ImageBatches:
    """uint8 image batches and labels on `device`, for any order and epoch. Its loader workers start
    once and serve every epoch (starting them each epoch costs seconds on a GPU run)."""

    def __init__(self, dataset: AugmentedImages, batch_size: int, workers: int, device: torch.device):
        self.sampler = EpochBatches(batch_size)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=dataset.collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.device = device

    def __call__(self, order: torch.Tensor, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.keys = [(epoch, index) for index in order.tolist()]
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            if self.device.type == "cuda":  # the layout cuDNN's fastest convolutions read; normalising keeps it
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=True)
