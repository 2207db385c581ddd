"""One phase of a plan, set up to train: what it feeds the network (images, or the frozen body's cached
features for a head-only phase), its optimizer, learning-rate schedule and augmentation."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from pipeline.config import Params
from pipeline.data.splits import Split
from pipeline.finetune import distributed
from pipeline.finetune.batches import AugmentedImages, ImageBatches, resolve_workers
from pipeline.finetune.strategies import Phase, Plan, apply_phase
from pipeline.model.backbones import Classifier
from pipeline.model.features import FrozenFeatures

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (network input, labels) on the device


def make_augment(params: Params) -> v2.Transform:
    """Light, per-image augmentation of the uint8 training images."""
    size, aug = params.train.image_size, params.train.augment
    steps = (
        [v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, 1.0), antialias=True)] if aug.crop_scale_min < 1 else []
    )
    steps += [v2.RandomHorizontalFlip()] if aug.hflip else []
    return v2.Compose(steps) if steps else v2.Identity()


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params: Params, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    fused = True if device.type == "cuda" else None  # one kernel for all parameters instead of several per tensor
    if params.train.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=params.train.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, weight_decay=params.train.weight_decay, fused=fused)


@dataclass
class Inputs:
    """What one phase trains: images through the whole model, or cached features through the head."""

    net: nn.Module
    train_batches: Callable[[torch.Tensor, int], Batches]  # (order, epoch) -> batches
    val_batches: Callable[[], Batches]


def on_cached_features(params: Params, phase: Phase) -> bool:
    """The phase trains the head alone on the frozen body's features, passed once (a body in train mode
    would update its BatchNorm statistics with every batch: it cannot be cached)."""
    return phase.head_only and params.finetune.cache_features and params.finetune.batchnorm != "train"


def body_as_built(params: Params, plan: Plan) -> bool:
    """Every phase of `plan` trains the head on cached features: the body stays the one build() made."""
    return all(on_cached_features(params, phase) for phase in plan.phases)


def feature_inputs(params: Params, model: Classifier, train: Split, val: Split, device, frozen) -> Inputs:
    """The head on the frozen body's features of both splits, passed once."""
    batch_size = params.train.batch_size
    features = {
        name: (frozen(params, model, split.images, device), split.labels.to(device))
        for name, split in (("train", train), ("val", val))
    }

    def feature_batches(name: str, order: torch.Tensor) -> Batches:
        rows, labels = features[name]
        for start in range(0, len(order), batch_size):
            index = distributed.share(order[start : start + batch_size]).to(device)
            yield rows[index], labels[index]

    return Inputs(
        model.head,
        lambda order, epoch: feature_batches("train", order),
        lambda: feature_batches("val", torch.arange(len(val.labels))),
    )


def phase_inputs(
    params: Params, model: Classifier, phase: Phase, train: Split, val: Split, device, frozen: FrozenFeatures
) -> Inputs:
    if on_cached_features(params, phase):
        return feature_inputs(params, model, train, val, device, frozen)
    batch_size = params.train.batch_size
    workers = resolve_workers(params.train.loader_workers, device)
    train_set = AugmentedImages(train.images, train.labels, make_augment(params), params.seed)
    val_batches = ImageBatches(AugmentedImages(val.images, val.labels, None, params.seed), batch_size, workers, device)
    return Inputs(
        model,
        ImageBatches(train_set, batch_size, workers, device),
        lambda: val_batches(torch.arange(len(val.labels)), 0),
    )


@dataclass
class PhaseRun:
    """One phase's training objects: the net that trains (wrapped for DDP or compiled) and its optimizer."""

    phase: Phase
    inputs: Inputs
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def start_phase(
    params: Params, model: Classifier, phase: Phase, train: Split, val: Split, device, resume, done, frozen
) -> PhaseRun:
    """Set up `phase`; `done` epochs of it are in `resume`, whose optimizer and schedule it continues."""
    steps = math.ceil(len(train.labels) / params.train.batch_size)
    groups = apply_phase(model, phase, params.finetune.layer_decay, params.train.weight_decay)
    optimizer = make_optimizer(params, groups, device)
    inputs = phase_inputs(params, model, phase, train, val, device, frozen)
    scheduler = warmup_cosine(optimizer, round(params.train.warmup_epochs * steps), steps * phase.epochs)
    if done:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    net = distributed.wrap(inputs.net, device)
    if params.train.compile and inputs.net is model:  # not the head alone on cached features: too small to pay
        net = torch.compile(net)
    return PhaseRun(phase, inputs, net, optimizer, scheduler)
