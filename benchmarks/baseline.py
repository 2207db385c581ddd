"""The straightforward fine-tuning loop that tutorials show, kept only as the benchmarks' yardstick.

As in torchvision's transfer-learning tutorial: `ImageFolder` decodes every file each time it
is read, per-image transforms run in DataLoader workers, and the loop is plain float32 with a
`.item()` every step. For the frozen-backbone case the tutorial freezes every weight but the
head and still runs the whole network each epoch. Nothing in pipeline/ uses this.
"""

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from pipeline.model.backbones import Backbone
from pipeline.model.sources import IMAGENET_MEAN, IMAGENET_STD


def folder_loader(root: Path, image_size: int, batch_size: int, workers: int, train: bool) -> DataLoader:
    if train:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataLoader(
        datasets.ImageFolder(str(root), transform),
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


def network(backbone: Backbone) -> nn.Module:
    """The backbone and its new head without the pipeline's in-model normalisation: the tutorial's
    loader normalises on the CPU."""
    return nn.Sequential(OrderedDict(body=backbone.model.body, head=backbone.model.head))


def freeze_all_but_head(model: nn.Module) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("head.")


def train_epoch(model: nn.Module, loader, optimizer, device: torch.device) -> float:
    """One epoch; returns the mean loss."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    running_loss, seen = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * inputs.size(0)
        seen += inputs.size(0)
    return running_loss / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Accuracy over the loader."""
    model.eval()
    correct, seen = 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        correct += (model(inputs).argmax(1) == labels).sum().item()
        seen += inputs.size(0)
    return correct / seen
