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
from collections.abc import Callable, Iterable
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
from pipeline.loader import AugmentedImages, ImageBatches, resolve_workers
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


def seed_everything(params: Params) -> None:
    """Seed what draws from torch's own generator (the new head's init); call before build().
    Batch order and augmentation have their own seeds, from params.seed (pipeline.loader)."""
    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(params.train.deterministic, warn_only=True)
    # On by default with the above, it fills every new tensor to expose reads of uninitialised memory:
    # a debugging aid that cost 10% of a CPU training step here, and more kernel launches on a GPU.
    torch.utils.deterministic.fill_uninitialized_memory = False


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


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (network input, labels) on the device


@dataclass
class Inputs:
    """What one phase trains: images through the whole model, or cached features through the head."""

    net: nn.Module
    train_batches: Callable[[torch.Tensor, int], Batches]  # (order, epoch) -> batches
    val_batches: Callable[[], Batches]


@torch.no_grad()
def extract_features(
    body: nn.Module, images: torch.Tensor, backbone: Backbone, batch_size: int, device: torch.device
) -> torch.Tensor:
    """One pass of the frozen body (eval mode) over uint8 images: the head's cached inputs, kept on `device`."""
    body.eval()
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="caching features", disable=None, leave=False):
        batch = normalize(images[start : start + batch_size].to(device), backbone.mean, backbone.std)
        chunks.append(body(batch).float())
    return torch.cat(chunks)


def phase_inputs(params: Params, backbone: Backbone, phase: Phase, train: Split, val: Split, device) -> Inputs:
    batch_size = params.train.batch_size
    if phase.head_only and params.finetune.cache_features and params.finetune.batchnorm != "train":
        body = backbone.model.body
        features = {
            name: (extract_features(body, split.images, backbone, batch_size, device), split.labels.to(device))
            for name, split in (("train", train), ("val", val))
        }

        def feature_batches(name: str, order: torch.Tensor) -> Batches:
            rows, labels = features[name]
            for start in range(0, len(order), batch_size):
                index = distributed.share(order[start : start + batch_size]).to(device)
                yield rows[index], labels[index]

        return Inputs(
            backbone.model.head,
            lambda order, epoch: feature_batches("train", order),
            lambda: feature_batches("val", torch.arange(len(val.labels))),
        )
    workers = resolve_workers(params.train.loader_workers, device)
    mean, std = backbone.mean, backbone.std
    train_set = AugmentedImages(train.images, train.labels, make_augment(params), params.seed)
    val_set = AugmentedImages(val.images, val.labels, None, params.seed)
    val_batches = ImageBatches(val_set, batch_size, workers, device, mean, std)
    return Inputs(
        backbone.model,
        ImageBatches(train_set, batch_size, workers, device, mean, std),
        lambda: val_batches(torch.arange(len(val.labels)), 0),
    )


def run_batches(net, batches: Batches, total: int, batch_size: int, device, loss_fn, optimizer=None, scheduler=None):
    """One pass over `total` images in global batches of `batch_size`, of which `batches` holds this
    process's shares; trains when given an optimizer. Returns (mean loss, accuracy) over all processes."""
    training = optimizer is not None
    # Summed on the device: reading them back every step would stall the GPU's queue.
    summed_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    steps = math.ceil(total / batch_size)
    for step, (x, y) in enumerate(
        tqdm(batches, total=steps, desc="train" if training else "val", disable=None, leave=False)
    ):
        with torch.set_grad_enabled(training), amp:
            logits = net(x).float()
            loss = loss_fn(logits, y)  # summed over this process's share
        if training:
            optimizer.zero_grad(set_to_none=True)
            # scaled so that DDP's average of the processes' gradients is that of the global batch's mean loss
            (loss * distributed.loss_scale(min(batch_size, total - step * batch_size))).backward()
            optimizer.step()
            scheduler.step()
        summed_loss += loss.detach()
        correct += (logits.argmax(1) == y).sum()
    summed_loss, correct = distributed.all_sum(summed_loss.item(), correct.item())
    return summed_loss / total, correct / total


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
    batch_size = params.train.batch_size
    steps = math.ceil(len(train.labels) / batch_size)
    for phase_index, phase in enumerate(phases or plan(params, backbone, train)):
        done = checkpoint.epochs_done(resume, phase_index, phase.epochs)
        if done == phase.epochs:
            continue
        optimizer = make_optimizer(params, apply_phase(model, phase), device)
        inputs = phase_inputs(params, backbone, phase, train, val, device)
        scheduler = warmup_cosine(optimizer, round(params.train.warmup_epochs * steps), steps * phase.epochs)
        if done:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        net = distributed.wrap(inputs.net, device)
        if params.train.compile and inputs.net is model:  # not the head alone on cached features: too small to pay
            net = torch.compile(net)
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
                inputs.train_batches(order, epoch),
                len(train.labels),
                batch_size,
                device,
                loss_fn,
                optimizer,
                scheduler,
            )
            seconds = time.perf_counter() - started
            model.eval()
            val_loss, val_acc = run_batches(net, inputs.val_batches(), len(val.labels), batch_size, device, loss_fn)
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
    seed_everything(params)
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
