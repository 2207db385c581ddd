"""Training speed of the pipeline against the tutorial loop (benchmarks/baseline.py), side by side.

    python -m benchmarks.training                                  # CPU: the sizes of `make bench`
    python -m benchmarks.training --device cuda --image-size 224 --images 4096 --batch-size 128 \
        --backbones resnet50,resnet18,efficientnet_lite0 --variants ours,ours+compile   # `make bench-gpu`

Both read the same synthetic JPEG folder (benchmarks/common.py). Three measurements:
1. head-only: seconds per epoch (train + validation pass), first and later epochs: the baseline
   runs the frozen network over freshly decoded files every epoch; the pipeline decodes once into
   uint8 tensors, caches the body's features and then trains the head on them alone.
2. loader alone vs training step alone, in images/s: which one bounds an epoch.
3. full fine-tuning, images/s of the training pass (epochs after the first, so compilation and
   warm-up stay out): the pipeline's `fit` (bf16 autocast, channels_last, fused optimizer and
   loader workers on CUDA; `train.compile` on request) against the baseline's float32 loop.
Bounded by --images and --epochs; weights are random (speed does not depend on them).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import baseline
from benchmarks.common import bench_params, folder_split, machine, seconds_of, write_photo_folder
from benchmarks.figures import BackboneThroughput, HeadOnly, Throughput, TrainingArgs, TrainingResult
from benchmarks.report import capture
from pipeline.finetune.batches import AugmentedImages, ImageBatches, resolve_workers
from pipeline.finetune.loop import Callbacks, run_batches, seed_everything, train_model
from pipeline.finetune.phase import make_augment, make_optimizer, warmup_cosine
from pipeline.finetune.strategies import apply_phase, full
from pipeline.model.backbones import build

CLASSES = 10


def run_params(args, strategy: str, **overrides):
    return bench_params(
        **{
            "finetune.strategy": strategy,
            "finetune.head_epochs": args.epochs,
            "train.epochs": args.epochs,
            "train.image_size": args.image_size,
            "train.batch_size": args.batch_size,
            "train.device": args.device,
            "model.weights": "none",
            **overrides,
        }
    )


def fit_epoch_times(params, train, val) -> tuple[list[float], list[float]]:
    """(seconds of each epoch from the end of the last, training-pass images/s of each epoch)."""
    marks, rates = [], []

    def on_epoch(record):
        marks.append(time.perf_counter())
        rates.append(record.images_per_second)

    classes = [str(i) for i in range(CLASSES)]
    callbacks = Callbacks(on_plan=lambda *_: marks.append(time.perf_counter()), on_epoch=on_epoch)
    train_model(params, classes, train, val, "benchmark", callbacks)
    return [b - a for a, b in zip(marks, marks[1:], strict=False)], rates


def head_only(args, folders, train, val, decode_seconds: float, device) -> HeadOnly:
    """Measurement 1 on --head-backbone; the pipeline's first epoch includes decoding the files once."""
    name = args.head_backbone
    params = run_params(args, "head", **{"model.backbone": name})
    ours, _ = fit_epoch_times(params, train, val)
    uncached, _ = fit_epoch_times(
        params.model_copy(update={"finetune": params.finetune.model_copy(update={"cache_features": False})}), train, val
    )

    torch.use_deterministic_algorithms(False)  # the baseline runs with torch's defaults
    model = baseline.network(build(name, "none", CLASSES)).to(device)
    baseline.freeze_all_but_head(model)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=params.train.lr)
    train_loader = baseline.folder_loader(
        folders["train"], args.image_size, args.batch_size, args.baseline_workers, True
    )
    val_loader = baseline.folder_loader(folders["val"], args.image_size, args.batch_size, args.baseline_workers, False)
    base = [
        seconds_of(
            lambda: (
                baseline.train_epoch(model, train_loader, optimizer, device),
                baseline.evaluate(model, val_loader, device),
            ),
            device,
        )
        for _ in range(args.epochs)
    ]
    return HeadOnly(
        backbone=name,
        baseline_first_s=base[0],
        baseline_later_s=statistics.mean(base[1:]),
        ours_decode_s=decode_seconds,
        ours_first_s=decode_seconds + ours[0],
        ours_later_s=statistics.mean(ours[1:]),
        ours_uncached_later_s=statistics.mean(uncached[1:]),
    )


def loader_rate(batches, device) -> float:
    """Images/s of a loader on its own (moved to the device, nothing computed)."""
    count = 0

    def drain():
        nonlocal count
        for images, _ in batches:
            count += len(images)

    seconds = seconds_of(drain, device)
    return count / seconds


def step_rate(step, batches: list, device) -> float:
    """Images/s of training steps on batches already on the device (after 3 warm-up steps). Distinct
    batches: steps repeated on one batch overfit it, and on CPU the tiny gradients then turn denormal
    and slow every step down several times."""
    step(batches[:3])
    return sum(len(y) for _, y in batches) / seconds_of(lambda: step(batches), device)


def device_batches(train, count: int, batch_size: int, device, ours: bool) -> list:
    """`count` distinct batches of the training images on the device: uint8 in channels_last on CUDA for
    the pipeline's model (which normalises them itself), normalised float for the baseline's."""
    rows = torch.arange(count * batch_size) % len(train.labels)
    channels_last = ours and device.type == "cuda"
    batches = []
    for index in rows.split(batch_size):
        x = (train.images[index] if ours else (train.images[index].float() / 255 - 0.5) / 0.25).to(device)
        batches.append(
            (x.contiguous(memory_format=torch.channels_last) if channels_last else x, train.labels[index].to(device))
        )
    return batches


VARIANTS = {  # the pipeline with these train settings (a field each of benchmarks/figures.py BackboneThroughput)
    "ours": {},
    "ours+compile": {"compile": True},
    "ours+nondeterministic": {"deterministic": False},
}


def throughput(args, name: str, folder: Path, train, val, device) -> BackboneThroughput:
    """Measurements 2 and 3 for one backbone: the baseline, then each of --variants."""
    steps = max(5, min(30, len(train.labels) // args.batch_size))
    params = run_params(args, "full", **{"model.backbone": name})

    # Baseline: its loader, its step, its epochs (each from fresh weights), with torch's defaults.
    torch.use_deterministic_algorithms(False)
    loader = baseline.folder_loader(folder, args.image_size, args.batch_size, args.baseline_workers, True)

    def fresh_model_and_optimizer():
        model = baseline.network(build(name, "none", CLASSES)).to(device)
        return model, torch.optim.AdamW(model.parameters(), lr=params.train.lr)

    model, optimizer = fresh_model_and_optimizer()
    batches = device_batches(train, steps, args.batch_size, device, ours=False)
    loader_alone = loader_rate(((i.to(device), t) for i, t in loader), device)
    step_alone = step_rate(lambda some: baseline.train_epoch(model, some, optimizer, device), batches, device)
    model, optimizer = fresh_model_and_optimizer()
    epochs = [
        seconds_of(lambda: baseline.train_epoch(model, loader, optimizer, device), device) for _ in range(args.epochs)
    ]
    row = {
        "backbone": name,
        "baseline": Throughput(
            loader=loader_alone, step=step_alone, epoch=len(train.labels) / statistics.median(epochs[1:])
        ),
    }
    for variant in args.variants.split(","):
        variant_params = params.model_copy(update={"train": params.train.model_copy(update=VARIANTS[variant])})
        row[variant] = ours(args, variant_params, train, val, device, steps)
    return BackboneThroughput.model_validate(row)


def ours(args, params, train, val, device, steps: int) -> Throughput:
    """The pipeline's loader (pipeline.finetune.batches), its step (loop.run_batches) and its epochs (train_model)."""
    seed_everything(params)
    backbone = build(params.model.backbone, "none", CLASSES)
    net = backbone.model.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    workers = resolve_workers(params.train.loader_workers, device)
    dataset = AugmentedImages(train.images, train.labels, make_augment(params), params.seed)
    batches = ImageBatches(dataset, args.batch_size, workers, device)
    next(batches(torch.arange(args.batch_size), 1))  # starts the workers, as fit does once per phase
    optimizer = make_optimizer(params, apply_phase(net, full(params, backbone, train).phases[0]), device)
    scheduler = warmup_cosine(optimizer, 0, 10**6)
    stepped = torch.compile(net) if params.train.compile else net
    loss_fn = nn.CrossEntropyLoss(reduction="sum")  # as fit's: run_batches scales it to the batch mean

    def step(some: list) -> None:
        run_batches(stepped, some, sum(len(y) for _, y in some), args.batch_size, device, loss_fn, optimizer, scheduler)

    loader_alone = loader_rate(batches(torch.arange(len(dataset)), 1), device)
    step_alone = step_rate(step, device_batches(train, steps, args.batch_size, device, ours=True), device)
    _, rates = fit_epoch_times(params, train, val)
    return Throughput(loader=loader_alone, step=step_alone, workers=workers, epoch=statistics.median(rates[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet18,resnet50")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=256, help="training images (validation: a quarter as many)")
    parser.add_argument("--photo-size", type=int, default=0, help="side of the JPEGs (0: 4/3 of --image-size)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per measured run; the first one is warm-up")
    parser.add_argument("--baseline-workers", type=int, default=2, help="the tutorial's DataLoader workers")
    parser.add_argument("--head-backbone", default="efficientnet_lite0", help="'' skips the head-only measurement")
    parser.add_argument("--variants", default="ours", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")  # TF32 for both sides on CUDA; no effect on CPU
    print(
        f"# benchmarks.training on {machine(device)}: {args.images} images of {args.image_size} px, "
        f"batch {args.batch_size}, {args.epochs} epochs per run",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        photo = args.photo_size or args.image_size * 4 // 3
        folders = {
            "train": write_photo_folder(Path(tmp, "train"), args.images, CLASSES, photo),
            "val": write_photo_folder(Path(tmp, "val"), max(CLASSES, args.images // 4), CLASSES, photo, 1),
        }
        decode = time.perf_counter()
        train, val = folder_split(folders["train"], args.image_size), folder_split(folders["val"], args.image_size)
        decode = time.perf_counter() - decode
        head = head_only(args, folders, train, val, decode, device) if args.head_backbone else None
        if head:
            print(f"\n## 1. head-only on {head.backbone}: seconds per epoch (train + validation pass)")
            print(f"baseline: first {head.baseline_first_s:.2f}, later {head.baseline_later_s:.2f}")
            print(
                f"ours: first {head.ours_first_s:.2f} (decoding once: {head.ours_decode_s:.2f}), "
                f"later {head.ours_later_s:.4f}; without the feature cache, later {head.ours_uncached_later_s:.2f}"
            )
            print(
                f"ratio, later epochs: x{head.later_speedup:.0f} (goal >= x20); "
                f"first epoch: x{1 / head.first_epoch_ratio:.2f}",
                flush=True,
            )
        rows = []
        print("\n## 2-3. full fine-tuning, images/s: loader alone, step alone, training pass of an epoch")
        print("| backbone | variant | loader | step | epoch | epoch vs baseline |")
        print("|---|---|---|---|---|---|")
        for name in args.backbones.split(","):
            row = throughput(args, name, folders["train"], train, val, device)
            rows.append(row)
            for variant, figures in row.variants():
                print(
                    f"| {name} | {variant} | {figures.loader:,.0f} | {figures.step:,.0f} | {figures.epoch:,.0f} | "
                    f"x{figures.epoch / row.baseline.epoch:.2f} |",
                    flush=True,
                )
    if args.out:
        settings = TrainingArgs(**vars(args) | {"out": str(args.out)})
        TrainingResult(environment=capture(), args=settings, head_only=head, full=rows).write(args.out)


if __name__ == "__main__":
    main()
