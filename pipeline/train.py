"""Stage 2: fine-tune the backbone with the strategy of params.yaml; keep the best epoch.

    python -m pipeline.train

    torchrun --standalone --nproc_per_node 2 -m pipeline.train   # data-parallel (pipeline/distributed.py)

Reads data/prepared/manifest.csv; writes models/model.pt (best weights by validation accuracy,
with classes and preprocessing), models/run.json (the MLflow run the later stages log to),
metrics/train.json and metrics/train_history.csv. models/checkpoint.pt, written every epoch,
lets a killed run resume where it stopped (pipeline/checkpoint.py).
"""

import contextlib
import copy
import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline import checkpoint, distributed, tracking
from pipeline.artifacts import atomic_path, write_json
from pipeline.backbones import Backbone, build
from pipeline.config import Params, load_params
from pipeline.data import Split, class_names, load_split, read_manifest
from pipeline.images import normalize
from pipeline.strategies import STRATEGIES, Phase, apply_phase, count_parameters, set_train_mode

MODEL_FILE = tracking.RUN_FILE.parent / "model.pt"
METRICS_FILE = Path("metrics/train.json")
HISTORY_FILE = Path("metrics/train_history.csv")


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but no CUDA device is visible")
    return torch.device(setting)


def seed_everything(seed: int) -> None:
    """Seed what draws random numbers (the new head's init, augmentation); call before build()."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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


def make_optimizer(params: Params, groups: list[dict]) -> torch.optim.Optimizer:
    if params.train.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=params.train.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=params.train.weight_decay)


@dataclass
class Inputs:
    """What one phase trains on: images (through the whole model) or cached features (head)."""

    net: nn.Module
    train: torch.Tensor
    val: torch.Tensor
    to_input: Callable[[torch.Tensor, bool], torch.Tensor]  # rows -> network input (augmented when training)


@torch.no_grad()
def extract_features(
    body: nn.Module, images: torch.Tensor, backbone: Backbone, batch_size: int, device
) -> torch.Tensor:
    """One pass of the frozen body (eval mode) over uint8 images: the head's cached inputs."""
    body.eval()
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="caching features", disable=None, leave=False):
        batch = normalize(images[start : start + batch_size], backbone.mean, backbone.std).to(device)
        chunks.append(body(batch).float().cpu())
    return torch.cat(chunks)


def phase_inputs(params: Params, backbone: Backbone, phase: Phase, train: Split, val: Split, device) -> Inputs:
    cache = phase.head_only and params.finetune.cache_features and params.finetune.batchnorm != "train"
    if cache:
        body, batch_size = backbone.model.body, params.train.batch_size
        return Inputs(
            backbone.model.head,
            extract_features(body, train.images, backbone, batch_size, device),
            extract_features(body, val.images, backbone, batch_size, device),
            lambda batch, training: batch,
        )
    augment = make_augment(params)

    def to_input(batch: torch.Tensor, training: bool) -> torch.Tensor:
        if training and len(batch):  # a process's share of a last, small batch may be empty
            batch = torch.stack([augment(image) for image in batch])
        return normalize(batch, backbone.mean, backbone.std)

    return Inputs(backbone.model, train.images, val.images, to_input)


def run_batches(
    net, rows, labels, to_input, device, batch_size, order=None, optimizer=None, scheduler=None, loss_fn=None
):
    """One pass over `rows` in `order`; trains when given an optimizer. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    order = torch.arange(len(rows)) if order is None else order
    total_loss, correct = 0.0, 0
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for start in tqdm(range(0, len(order), batch_size), desc="train" if training else "val", disable=None, leave=False):
        index = order[start : start + batch_size]
        mine = distributed.share(index)  # this process's part of the global batch
        x = to_input(rows[mine], training).to(device)
        y = labels[mine].to(device)
        if device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(training), amp:
            logits = net(x).float()
            loss = loss_fn(logits, y) * distributed.loss_scale(len(index))  # loss_fn sums
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        total_loss += loss.item() * len(index) / distributed.size()
        correct += (logits.argmax(1) == y).sum().item()
    total_loss, correct = distributed.all_sum(total_loss, correct)
    return total_loss / len(order), correct / len(order)


def plan(params: Params, backbone: Backbone, train: Split) -> list[Phase]:
    """The strategy's phases for this backbone and data."""
    return STRATEGIES[params.finetune.strategy](params, backbone, train)


def fit(
    params: Params,
    backbone: Backbone,
    train: Split,
    val: Split,
    on_epoch: Callable = lambda *_: None,
    phases: list[Phase] | None = None,
    save: Callable[[dict], None] = lambda _: None,
    resume: dict | None = None,
) -> dict:
    """Run the phases (by default the strategy's); return the best state (by val accuracy) and its record.
    `save` gets the whole training state after each epoch; `resume` is such a state to continue from."""
    device = distributed.local(pick_device(params.train.device))
    generator = torch.Generator().manual_seed(params.seed)  # the batch order
    distributed.seed_rank(params.seed)
    model = backbone.model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    # summed, then scaled to the mean over the global batch in run_batches (however the ranks split it)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing, reduction="sum")
    best = {"val_accuracy": -1.0}
    epoch = 0
    if resume:
        model.load_state_dict(resume["state_dict"])
        generator.set_state(resume["generator"])
        checkpoint.restore_rng(resume["rng"])
        best, epoch = resume["best"], resume["epoch"]
    for phase_index, phase in enumerate(phases or plan(params, backbone, train)):
        done = checkpoint.epochs_done(resume, phase_index, phase.epochs)
        if done == phase.epochs:
            continue
        optimizer = make_optimizer(params, apply_phase(model, phase))
        inputs = phase_inputs(params, backbone, phase, train, val, device)
        steps = math.ceil(len(train.labels) / params.train.batch_size)
        scheduler = warmup_cosine(optimizer, round(params.train.warmup_epochs * steps), steps * phase.epochs)
        if done:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        net = distributed.wrap(inputs.net, device)
        for phase_epoch in tqdm(
            range(done + 1, phase.epochs + 1),
            desc=f"{params.finetune.strategy}: {phase.name}",
            unit="epoch",
            disable=None if distributed.is_main() else True,
        ):
            epoch += 1
            started = time.perf_counter()
            set_train_mode(model, params.finetune.batchnorm)
            order = torch.randperm(len(train.labels), generator=generator)
            lr = optimizer.param_groups[0]["lr"]
            train_loss, train_acc = run_batches(
                net,
                inputs.train,
                train.labels,
                inputs.to_input,
                device,
                params.train.batch_size,
                order,
                optimizer,
                scheduler,
                loss_fn,
            )
            seconds = time.perf_counter() - started
            model.eval()
            val_loss, val_acc = run_batches(
                inputs.net, inputs.val, val.labels, inputs.to_input, device, params.train.batch_size, loss_fn=loss_fn
            )
            record = {
                "epoch": epoch,
                "phase": phase.name,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
                "epoch_seconds": seconds,
                "images_per_second": len(train.labels) / seconds,
            }
            if val_acc > best["val_accuracy"]:
                best = {**record, "state_dict": copy.deepcopy(model.state_dict())}
            on_epoch(record, model, optimizer)
            save(
                {
                    "epoch": epoch,
                    "phase": phase.name,
                    "phase_index": phase_index,
                    "phase_epoch": phase_epoch,
                    "state_dict": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "best": best,
                }
            )
    return best


def trained_modules(phases: list[Phase]) -> set[str]:
    return {name for phase in phases for name in phase.trainable}


def main() -> None:
    params = load_params()
    tracking.check_reachable()  # fail fast, before minutes of loading and training
    distributed.start(pick_device(params.train.device))
    rows = read_manifest()
    classes = class_names(rows)
    size, max_pixels = params.train.image_size, params.data.max_image_pixels
    train, val = (load_split(rows, split, size, max_pixels) for split in ("train", "val"))
    seed_everything(params.seed)
    backbone = build(params.model.backbone, params.model.weights, len(classes))
    total = sum(p.numel() for p in backbone.model.parameters())
    resume = checkpoint.load(params)
    history = resume["history"] if resume else []
    main_rank = distributed.is_main()  # the only one that logs and writes files

    def on_epoch(record: dict, *_) -> None:
        history.append(record)
        if main_rank:
            mlflow.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "phase")}, step=record["epoch"])

    def save(state: dict) -> None:
        run_id = mlflow.active_run().info.run_id if main_rank else None
        seconds = time.perf_counter() - started
        fingerprint = checkpoint.fingerprint(params)
        checkpoint.save(state | {"fingerprint": fingerprint, "history": history, "run_id": run_id, "seconds": seconds})

    with tracking.start_run(params, resume and resume["run_id"]) if main_rank else contextlib.nullcontext():
        started = time.perf_counter() - (resume["seconds"] if resume else 0)  # auto's choice of blocks counts
        phases = plan(params, backbone, train)
        trainable = count_parameters(backbone.model, trained_modules(phases))
        if main_rank:
            mlflow.log_metrics({"trainable_params": trainable, "total_params": total})
        best = fit(params, backbone, train, val, on_epoch, phases, save, resume)
        train_seconds = time.perf_counter() - started
        if not main_rank:
            distributed.stop()
            return
        meta = {
            "backbone": params.model.backbone,
            "classes": classes,
            "image_size": size,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "strategy": params.finetune.strategy,
            "best_epoch": best["epoch"],
        }
        with atomic_path(MODEL_FILE) as partial:
            torch.save({"state_dict": best["state_dict"], "meta": meta}, partial)
        metrics = {
            "best_val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"],
            "trainable_params": trainable,
            "total_params": total,
            "train_seconds": round(train_seconds, 1),
        }
        mlflow.log_metrics({"best_val_accuracy": best["val_accuracy"], "train_seconds": train_seconds})
        write_json(METRICS_FILE, metrics)
        with atomic_path(HISTORY_FILE) as partial, open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    checkpoint.CHECKPOINT_FILE.unlink()  # the outputs are complete: nothing left to resume
    processes = f" on {distributed.size()} processes" if distributed.active() else ""
    distributed.stop()
    print(
        f"{params.finetune.strategy}: best val accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']}, "
        f"{trainable:,} of {total:,} parameters trained, {train_seconds:.0f} s{processes}"
    )


if __name__ == "__main__":
    main()
