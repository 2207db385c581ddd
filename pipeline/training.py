"""Fine-tuning: a strategy's phases run epoch by epoch on the prepared split, the best epoch kept.

`train_model` is the one training entry point, of the train stage and of compare; what each does
with the plan, the epochs and the resumable state (MLflow, checkpoints) it passes as `Callbacks`.
Under torchrun every rank calls it; pipeline.distributed shares out the batches.
"""

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline import distributed
from pipeline.backbones import Backbone, Classifier, build
from pipeline.card import ModelCard
from pipeline.checkpoint import TrainingState, restore_rng
from pipeline.config import Params
from pipeline.decoded import Split
from pipeline.loader import AugmentedImages, ImageBatches, resolve_workers
from pipeline.strategies import STRATEGIES, Phase, Plan, apply_phase, count_parameters, set_train_mode

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (network input, labels) on the device


def _ignore(*_) -> None:
    pass


@dataclass
class Callbacks:
    on_plan: Callable[[Plan, int, int], None] = _ignore  # (plan, trainable params, total params)
    on_epoch: Callable[[dict], None] = _ignore  # an epoch's record
    on_state: Callable[[TrainingState], None] = _ignore  # after every epoch, on every rank


@dataclass
class Trained:
    model: Classifier  # the best epoch's weights, on the CPU, in eval mode
    card: ModelCard
    plan: Plan
    best: dict  # the best epoch's record
    history: list[dict]
    trainable_params: int
    total_params: int
    seconds: float  # planning and training, across resumes
    # the best epoch's class of each validation image; None if it was before a resume from an older checkpoint
    val_predicted: torch.Tensor | None


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


@dataclass
class Inputs:
    """What one phase trains: images through the whole model, or cached features through the head."""

    net: nn.Module
    train_batches: Callable[[torch.Tensor, int], Batches]  # (order, epoch) -> batches
    val_batches: Callable[[], Batches]


@torch.no_grad()
def extract_features(model: Classifier, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """One pass of the frozen body (eval mode) over uint8 images: the head's cached inputs, kept on `device`.
    Under torchrun each rank passes every N-th batch, so it reads and computes only its share, and the ranks
    assemble the whole: the same batches as one process's, so the same features."""
    model.body.eval()
    features = torch.zeros(len(images), model.head.in_features, device=device)
    starts = range(0, len(images), batch_size)[distributed.rank() :: distributed.size()]
    for start in tqdm(starts, desc="caching features", disable=None, leave=False):
        features[start : start + batch_size] = model.features(images[start : start + batch_size].to(device)).float()
    return distributed.assemble(features)


class FrozenFeatures:
    """The body's features as built, shared by the runs of a comparison. Pretrained weights make the same body
    in every run (the seed draws the head; strategies differ only in what they train after), so one pass over
    an image tensor serves the `head` strategy and `lp-ft`'s head phase at every seed. A random-init body
    differs by seed: its features are not kept."""

    def __init__(self):
        self._passes: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, params: Params, model: Classifier, images: torch.Tensor, device) -> torch.Tensor:
        batch_size, weights = params.train.batch_size, params.model.weights
        if weights.lower() == "none":
            return extract_features(model, images, batch_size, device)
        key = (params.model.backbone, weights, batch_size, str(device), id(images))
        if key not in self._passes:
            # the images are kept with their features so that no other tensor can take their id
            self._passes[key] = (images, extract_features(model, images, batch_size, device))
        return self._passes[key][1]


def on_cached_features(params: Params, phase: Phase) -> bool:
    """The phase trains the head alone on the frozen body's features, passed once (a body in train mode
    would update its BatchNorm statistics with every batch: it cannot be cached)."""
    return phase.head_only and params.finetune.cache_features and params.finetune.batchnorm != "train"


def body_as_built(params: Params, plan: Plan) -> bool:
    """Every phase of `plan` trains the head on cached features: the body stays the one build() made."""
    return all(on_cached_features(params, phase) for phase in plan.phases)


def phase_inputs(
    params: Params, model: Classifier, phase: Phase, train: Split, val: Split, device, frozen: FrozenFeatures
) -> Inputs:
    batch_size = params.train.batch_size
    if on_cached_features(params, phase):
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
    workers = resolve_workers(params.train.loader_workers, device)
    train_set = AugmentedImages(train.images, train.labels, make_augment(params), params.seed)
    val_batches = ImageBatches(AugmentedImages(val.images, val.labels, None, params.seed), batch_size, workers, device)
    return Inputs(
        model,
        ImageBatches(train_set, batch_size, workers, device),
        lambda: val_batches(torch.arange(len(val.labels)), 0),
    )


def run_batches(
    net, batches: Batches, total: int, batch_size: int, device, loss_fn, optimizer=None, scheduler=None, predicted=None
):
    """One pass over `total` images in global batches of `batch_size`, of which `batches` holds this
    process's shares; trains when given an optimizer. Returns (mean loss, accuracy) over all processes;
    appends each batch's predicted classes to the list `predicted` when given one."""
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
        if predicted is not None:
            predicted.append(logits.argmax(1))
    summed_loss, correct = distributed.all_sum(summed_loss.item(), correct.item())
    return summed_loss / total, correct / total


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
):
    """Set up `phase`; `done` epochs of it are in `resume`, whose optimizer and schedule it continues."""
    steps = math.ceil(len(train.labels) / params.train.batch_size)
    optimizer = make_optimizer(params, apply_phase(model, phase), device)
    inputs = phase_inputs(params, model, phase, train, val, device, frozen)
    scheduler = warmup_cosine(optimizer, round(params.train.warmup_epochs * steps), steps * phase.epochs)
    if done:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    net = distributed.wrap(inputs.net, device)
    if params.train.compile and inputs.net is model:  # not the head alone on cached features: too small to pay
        net = torch.compile(net)
    return PhaseRun(phase, inputs, net, optimizer, scheduler)


def whole_split(shares: list[torch.Tensor], total: int, batch_size: int) -> torch.Tensor:
    """Per image of a split passed in order, from this process's share of each global batch (all of them in one
    process; under torchrun the ranks assemble the whole)."""
    starts = range(0, total, batch_size)
    positions = torch.cat([distributed.share(torch.arange(start, min(start + batch_size, total))) for start in starts])
    whole = torch.zeros(total, dtype=torch.int64, device=shares[0].device)
    whole[positions.to(whole.device)] = torch.cat(shares)
    return distributed.assemble(whole)


def run_epoch(params: Params, model: Classifier, run: PhaseRun, epoch: int, order, val_images: int, device, loss_fn):
    """Train on the images in `order`, then validate; the epoch's record and this process's share of the
    validation classes (whole_split assembles them, for the epochs that become the best)."""
    batch_size, images = params.train.batch_size, len(order)
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    batches = run.inputs.train_batches(order, epoch)
    train_loss, train_acc = run_batches(
        run.net, batches, images, batch_size, device, loss_fn, run.optimizer, run.scheduler
    )
    seconds = time.perf_counter() - started
    model.eval()
    shares = []
    val_loss, val_acc = run_batches(
        run.net, run.inputs.val_batches(), val_images, batch_size, device, loss_fn, predicted=shares
    )
    record = {
        "epoch": epoch,
        "phase": run.phase.name,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr,
        "epoch_seconds": seconds,
        "images_per_second": images / seconds,
    }
    return record, shares


def epoch_line(where: str, record: dict) -> str:
    return (
        f"{where} (epoch {record['epoch']}): train loss {record['train_loss']:.4f} "
        f"accuracy {record['train_accuracy']:.4f}, val loss {record['val_loss']:.4f} "
        f"accuracy {record['val_accuracy']:.4f}, {record['epoch_seconds']:.1f} s"
    )


def fit(
    params: Params,
    model: Classifier,
    phases: tuple[Phase, ...],
    train: Split,
    val: Split,
    device: torch.device,
    callbacks: Callbacks | None = None,
    resume: TrainingState | None = None,
    seconds_before: float = 0.0,
    frozen: FrozenFeatures | None = None,
) -> TrainingState:
    """Run the phases on `model` (already on `device`); return the state after the last epoch, whose
    `best` holds the best epoch (by validation accuracy) and its weights. `frozen` holds features of the body
    as built: the first phase's alone, as a later one's body may have trained."""
    callbacks = callbacks or Callbacks()
    started = time.perf_counter() - seconds_before
    generator = torch.Generator().manual_seed(params.seed)  # the batch order
    distributed.seed_rank(params.seed)
    # summed, then scaled to the mean over the global batch in run_batches (however the ranks split it)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing, reduction="sum")
    state = resume
    if resume:
        model.load_state_dict(resume.model)
        generator.set_state(resume.generator)
        restore_rng(resume.rng)
    best = resume.best if resume else {"val_accuracy": -1.0}
    history = list(resume.history) if resume else []
    for phase_index, phase in enumerate(phases):
        done = resume.epochs_done(phase_index, phase.epochs) if resume else 0
        if done == phase.epochs:
            continue
        phase_frozen = frozen if frozen is not None and phase_index == 0 else FrozenFeatures()
        run = start_phase(params, model, phase, train, val, device, resume, done, phase_frozen)
        show = distributed.is_main()
        desc = f"{params.finetune.strategy}: {phase.name}"
        for phase_epoch in tqdm(range(done + 1, phase.epochs + 1), desc, unit="epoch", disable=None if show else True):
            set_train_mode(model, params.finetune.batchnorm)
            order = torch.randperm(len(train.labels), generator=generator)
            record, val_shares = run_epoch(
                params, model, run, len(history) + 1, order, len(val.labels), device, loss_fn
            )
            history.append(record)
            if show and not sys.stderr.isatty():  # no progress bar there: one plain line per epoch for the log
                where = desc if phase.name != params.finetune.strategy else phase.name  # not "partial: partial"
                print(epoch_line(f"{where} {phase_epoch}/{phase.epochs}", record), flush=True)
            if record["val_accuracy"] > best["val_accuracy"]:  # the same on every rank: summed over them
                val_predicted = whole_split(val_shares, len(val.labels), params.train.batch_size).cpu()
                best = {**record, "state_dict": copy.deepcopy(model.state_dict()), "val_predicted": val_predicted}
            callbacks.on_epoch(record)
            state = TrainingState(
                epoch=record["epoch"],
                phase=phase.name,
                phase_index=phase_index,
                phase_epoch=phase_epoch,
                model=model.state_dict(),
                optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(),
                generator=generator.get_state(),
                best=best,
                history=history,
                seconds=time.perf_counter() - started,
            )
            callbacks.on_state(state)
    return state


def train_model(
    params: Params,
    classes: list[str],
    train: Split,
    val: Split,
    data_fingerprint: str,
    callbacks: Callbacks | None = None,
    resume: TrainingState | None = None,
    frozen: FrozenFeatures | None = None,
) -> Trained:
    """Build the backbone, plan the strategy (auto's probe on the training device), fit; the best epoch.
    Runs given the same `frozen` share the frozen body's features of the same image tensors."""
    callbacks = callbacks or Callbacks()
    started = time.perf_counter() - (resume.seconds if resume else 0.0)
    device = distributed.local(pick_device(params.train.device))
    seed_everything(params)
    backbone: Backbone = build(params.model.backbone, params.model.weights, len(classes))
    model = backbone.model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    plan = STRATEGIES[params.finetune.strategy](params, backbone, train)
    trainable = count_parameters(model, plan.trained_modules)
    total = sum(p.numel() for p in model.parameters())
    callbacks.on_plan(plan, trainable, total)
    seconds_before = time.perf_counter() - started
    final = fit(params, model, plan.phases, train, val, device, callbacks, resume, seconds_before, frozen)
    best = dict(final.best)
    model.load_state_dict(best.pop("state_dict"))
    val_predicted = best.pop("val_predicted", None)
    card = ModelCard(
        classes=classes,
        image_size=params.train.image_size,
        mean=backbone.mean,
        std=backbone.std,
        backbone=params.model.backbone,
        weights=params.model.weights,
        strategy=params.finetune.strategy,
        data_source=params.data.source,
        data_fingerprint=data_fingerprint,
    )
    return Trained(model.cpu().eval(), card, plan, best, final.history, trainable, total, final.seconds, val_predicted)
