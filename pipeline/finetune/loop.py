"""Fine-tuning: a strategy's phases run epoch by epoch on the prepared split, the best epoch kept.

`train_model` is the one training entry point, of the train stage and of compare; what each does
with the plan, the epochs and the resumable state (MLflow, checkpoints) it passes as `Callbacks`.
Under torchrun every rank calls it; pipeline.finetune.distributed shares out the batches.
"""

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import Params
from pipeline.data.splits import Split
from pipeline.finetune import distributed
from pipeline.finetune.checkpoint import TrainingState, restore_rng
from pipeline.finetune.phase import Batches, PhaseRun, start_phase
from pipeline.finetune.records import BestEpoch, EpochRecord
from pipeline.finetune.strategies import STRATEGIES, Phase, Plan, count_parameters, set_train_mode
from pipeline.model.backbones import Backbone, Classifier, build
from pipeline.model.card import ModelCard
from pipeline.model.features import FrozenFeatures, pick_device
from pipeline.progress import progress


def _ignore(*_) -> None:
    pass


@dataclass
class Callbacks:
    on_plan: Callable[[Plan, int, int], None] = _ignore  # (plan, trainable params, total params)
    on_epoch: Callable[[EpochRecord], None] = _ignore
    on_state: Callable[[TrainingState], None] = _ignore  # after every epoch, on every rank


@dataclass
class Trained:
    model: Classifier  # the best epoch's weights, on the CPU, in eval mode
    card: ModelCard
    plan: Plan
    best: EpochRecord
    history: list[EpochRecord]
    trainable_params: int
    total_params: int
    seconds: float  # planning and training, across resumes
    # the best epoch's class of each validation image; None if it was before a resume from an older checkpoint
    val_predicted: torch.Tensor | None


def seed_everything(params: Params) -> None:
    """Seed what draws from torch's own generator (the new head's init); call before build().
    Batch order and augmentation have their own seeds, from params.seed (pipeline.finetune.batches)."""
    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(params.train.deterministic, warn_only=True)
    # On by default with the above, it fills every new tensor to expose reads of uninitialised memory:
    # a debugging aid that cost 10% of a CPU training step here, and more kernel launches on a GPU.
    torch.utils.deterministic.fill_uninitialized_memory = False


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
    desc = "training" if training else "validating"
    for step, (x, y) in enumerate(progress(batches, desc, total=total, unit="img", per_item=batch_size)):
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


def whole_split(shares: list[torch.Tensor], total: int, batch_size: int) -> torch.Tensor:
    """Per image of a split passed in order, from this process's share of each global batch (all of them in one
    process; under torchrun the ranks assemble the whole)."""
    starts = range(0, total, batch_size)
    positions = torch.cat([distributed.share(torch.arange(start, min(start + batch_size, total))) for start in starts])
    whole = torch.zeros(total, dtype=torch.int64, device=shares[0].device)
    whole[positions.to(whole.device)] = torch.cat(shares)
    return distributed.assemble(whole)


def run_epoch(
    params: Params, model: Classifier, run: PhaseRun, epoch: int, order, val_images: int, device, loss_fn
) -> tuple[EpochRecord, list[torch.Tensor]]:
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
    record = EpochRecord(epoch, run.phase.name, train_loss, train_acc, val_loss, val_acc, lr, seconds, images / seconds)
    return record, shares


@dataclass
class Progress:
    """What `fit` carries from epoch to epoch: the batch order's generator, the records, the best epoch."""

    generator: torch.Generator
    history: list[EpochRecord]
    best: BestEpoch | None
    started: float  # perf_counter at the start, less the seconds of the run before a resume
    state: TrainingState | None = None  # after the last epoch

    def keep_if_best(
        self, model: nn.Module, record: EpochRecord, val_shares: list[torch.Tensor], val_images: int, batch_size: int
    ):
        """Keep the epoch if it is the best so far (the same on every rank: the accuracy is summed over them),
        with its weights and its class of each validation image, assembled from this process's shares."""
        if self.best is None or record.val_accuracy > self.best.record.val_accuracy:
            val_predicted = whole_split(val_shares, val_images, batch_size).cpu()
            self.best = BestEpoch(record, copy.deepcopy(model.state_dict()), val_predicted)


def train_phase(params: Params, model, run: PhaseRun, phase_index: int, done: int, progress: Progress, data, callbacks):
    """The epochs of `run`'s phase after the `done` ones, each followed by the callbacks."""
    (train, val), device, phase = data, next(model.parameters()).device, run.phase
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing, reduction="sum")  # mean in run_batches
    show = distributed.is_main()
    desc = f"{params.finetune.strategy}: {phase.name}"
    for phase_epoch in tqdm(range(done + 1, phase.epochs + 1), desc, unit="epoch", disable=None if show else True):
        set_train_mode(model, params.finetune.batchnorm)
        order = torch.randperm(len(train.labels), generator=progress.generator)
        epoch = len(progress.history) + 1
        record, val_shares = run_epoch(params, model, run, epoch, order, len(val.labels), device, loss_fn)
        progress.history.append(record)
        if show and not sys.stderr.isatty():  # no progress bar there: one plain line per epoch for the log
            where = desc if phase.name != params.finetune.strategy else phase.name  # not "partial: partial"
            print(record.line(f"{where} {phase_epoch}/{phase.epochs}"), flush=True)
        progress.keep_if_best(model, record, val_shares, len(val.labels), params.train.batch_size)
        callbacks.on_epoch(record)
        progress.state = TrainingState(
            epoch=record.epoch,
            phase=phase.name,
            phase_index=phase_index,
            phase_epoch=phase_epoch,
            model=model.state_dict(),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            generator=progress.generator.get_state(),
            best=progress.best,
            history=progress.history,
            seconds=time.perf_counter() - progress.started,
        )
        callbacks.on_state(progress.state)


def fit(
    params: Params,
    model: Classifier,
    phases: tuple[Phase, ...],
    train: Split,
    val: Split,
    callbacks: Callbacks | None = None,
    resume: TrainingState | None = None,
    seconds_before: float = 0.0,
    frozen: FrozenFeatures | None = None,
) -> TrainingState:
    """Run the phases on `model` (already on its device); return the state after the last epoch, whose
    `best` holds the best epoch (by validation accuracy) and its weights. `frozen` holds features of the body
    as built: the first phase's alone, as a later one's body may have trained."""
    callbacks = callbacks or Callbacks()
    device = next(model.parameters()).device
    progress = Progress(torch.Generator().manual_seed(params.seed), [], None, time.perf_counter() - seconds_before)
    distributed.seed_rank(params.seed)
    if resume:
        model.load_state_dict(resume.model)
        progress.generator.set_state(resume.generator)
        restore_rng(resume.rng)
        progress.best, progress.history, progress.state = resume.best, list(resume.history), resume
    for phase_index, phase in enumerate(phases):
        done = resume.epochs_done(phase_index, phase.epochs) if resume else 0
        if done == phase.epochs:
            continue
        phase_frozen = frozen if frozen is not None and phase_index == 0 else FrozenFeatures()
        run = start_phase(params, model, phase, train, val, device, resume, done, phase_frozen)
        train_phase(params, model, run, phase_index, done, progress, (train, val), callbacks)
    return progress.state


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
    backbone: Backbone = build(params.model.backbone, params.model.weights, len(classes), params.train.image_size)
    model = backbone.model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    total = sum(p.numel() for p in model.parameters())  # the network's own: adapters are merged into it
    plan = STRATEGIES[params.finetune.strategy](params, backbone, train)
    trainable = count_parameters(model, plan.trained_modules)
    callbacks.on_plan(plan, trainable, total)
    seconds_before = time.perf_counter() - started
    final = fit(params, model, plan.phases, train, val, callbacks, resume, seconds_before, frozen)
    model.load_state_dict(final.best.state_dict)
    model = plan.finalize(model)
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
        pretrained_size=backbone.pretrained_size,
        pretrained_interpolation=backbone.interpolation,
    )
    best = final.best
    return Trained(
        model.cpu().eval(), card, plan, best.record, final.history, trainable, total, final.seconds, best.val_predicted
    )
