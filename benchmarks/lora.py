"""LoRA against full fine-tuning (and the other strategies) on a small ViT, side by side in one run: trained
parameters, peak memory of training, time of a training step; and what merging the adapters costs at export.

    python -m benchmarks.lora                                        # CPU: ViT-Tiny/16 at 96 px, batch 32
    python -m benchmarks.lora --backbone vit_base_patch16_224 --image-size 224 --device cuda

Each strategy runs in a process of its own, so its peak resident memory is its own (measured above the
memory the process held once the model was built). Weights are random: speed and memory do not depend on them.
`--out` writes the rows with the run's environment (benchmarks/figures.py `LoraResult`, read by docs/results.py).
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from benchmarks.common import bench_params, machine, sync
from benchmarks.figures import ExportCost, LoraArgs, LoraResult, StrategySteps
from benchmarks.report import capture
from pipeline.data.splits import Split
from pipeline.finetune.loop import seed_everything
from pipeline.finetune.phase import make_optimizer
from pipeline.finetune.strategies import STRATEGIES, apply_phase, count_parameters
from pipeline.model.backbones import build
from pipeline.model.card import ModelCard
from pipeline.release.onnx_export import export_checked

CLASSES = 10
STRATEGIES_COMPARED = ["full", "lora", "partial", "norm", "bitfit", "head"]


def step_seconds(args) -> StrategySteps:
    """One strategy's training steps on random uint8 batches: median seconds, trained parameters, peak memory."""
    device = torch.device(args.device)
    params = bench_params(**{"finetune.strategy": args.strategy, "train.image_size": args.image_size})
    seed_everything(params)
    backbone = build(args.backbone, "none", CLASSES, args.image_size)
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (args.batch_size,))
    plan = STRATEGIES[args.strategy](params, backbone, Split([], images, labels))
    model = backbone.model.to(device).train()
    phase = plan.phases[-1]
    optimizer = make_optimizer(params, apply_phase(model, phase), device)
    built_bytes = psutil.Process().memory_info().rss
    seconds = []
    for step in range(args.warmup + args.steps):
        sync(device)
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= args.warmup:
            seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return StrategySteps(
        strategy=args.strategy,
        trainable_params=count_parameters(model, plan.trained_modules),
        step_seconds=statistics.median(seconds),
        peak_training_mib=(peak - built_bytes) / 2**20,
        export=export_cost(plan, backbone, args) if args.strategy == "lora" else None,
    )


def export_cost(plan, backbone, args) -> ExportCost:
    """What the adapters cost at export: merging them, then the export with its parity check, of the merged net."""
    started = time.perf_counter()
    merged = plan.finalize(backbone.model.cpu().eval())
    merge = time.perf_counter() - started
    card = ModelCard(
        classes=[str(c) for c in range(CLASSES)],
        image_size=args.image_size,
        mean=backbone.mean,
        std=backbone.std,
        backbone=args.backbone,
        weights="none",
        strategy="lora",
        data_source="benchmark",
        data_fingerprint="benchmark",
    )
    images = torch.randint(0, 256, (8, 3, args.image_size, args.image_size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        export_checked(merged, card, images, Path(folder) / "model.onnx", 18, 1e-4)
        export = time.perf_counter() - started
    return ExportCost(merge_seconds=merge, export_seconds=export)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategy", help="measure this one strategy here and print its JSON (used by the run)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args()
    if args.strategy:
        print(step_seconds(args).model_dump_json())
        return
    rows = []
    for strategy in STRATEGIES_COMPARED:
        command = [sys.executable, "-m", "benchmarks.lora", *sys.argv[1:], "--strategy", strategy]
        command = [part for part in command if part != "--out" and part != str(args.out)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(StrategySteps.model_validate_json(done.stdout.strip().splitlines()[-1]))
    settings = LoraArgs(**{key: getattr(args, key) for key in LoraArgs.model_fields})
    result = LoraResult(environment=capture(), args=settings, rows=rows)
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {machine(torch.device(args.device))}")
    for row in result.strategies:
        print(
            f"{row.strategy:>8}: {row.trainable_params:>11,} trained ({row.params_share:.3f} of full), step "
            f"{row.step_seconds:.3f} s (x{row.step_ratio:.2f} of full), peak training memory "
            f"+{row.peak_training_mib:.0f} MiB (x{row.memory_ratio:.2f})"
        )
    export = result.lora_strategy.export
    print(
        f"LoRA at export: merge {export.merge_seconds:.2f} s, then export with the parity gate "
        f"{export.export_seconds:.1f} s"
    )
    if args.out:
        result.write(args.out)


if __name__ == "__main__":
    main()
