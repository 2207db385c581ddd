"""Pretrained backbones by name, with a new classification head, and their blocks.

A `Classifier` takes uint8 RGB images, normalises them with its backbone's mean and std, and runs `body` (the
pretrained network with its head removed) then `head` (a new nn.Linear), so every strategy, the feature cache
and the exported graph see the same parts whatever the architecture, and no caller normalises. Where the names
come from (efficientnet_lite0, 1 and 2 offline, any torchvision or timm model) is pipeline.model.sources; the blocks,
pipeline.model.blocks; which to pick: docs/strategies.md#backbones-and-weights.
"""

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.model.blocks import block_label
from pipeline.model.sources import resolve

__all__ = ["Backbone", "Classifier", "block_label", "build"]


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear, mean: tuple, std: tuple):
        super().__init__()
        self.body = body
        self.head = head
        # In pixel units (0..255). Not in the state dict: the model card carries mean and std.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The body's output for a uint8 (or 0..255 float) N x 3 x H x W batch: the head's input."""
        return self.body((images.to(self.mean.dtype) - self.mean) / self.std)  # float32, or half after .half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class Backbone:
    model: Classifier
    blocks: list[list[str]]  # each block: names of modules or parameters of `model` (e.g. "body.layer4")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrained_size: int | None = None  # the input size its weights were trained at, where known
    interpolation: str | None = None


def build(name: str, weights: str, num_classes: int, image_size: int | None = None) -> Backbone:
    """The named backbone with `weights`, its head replaced by a new one for `num_classes`; built for
    `image_size` where its architecture needs to know it (a ViT's patch grid)."""
    network = resolve(name)(weights, image_size)
    head = nn.Linear(network.features, num_classes)
    blocks = [[f"body.{part}" for part in block] for block in network.blocks]
    model = Classifier(network.body, head, network.mean, network.std)
    return Backbone(model, blocks, network.mean, network.std, network.pretrained_size, network.interpolation)
