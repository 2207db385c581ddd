"""LoRA against full fine-tuning (and the other strategies) on a small ViT, side by side in one run: trained
parameters, peak memory of training, time of a training step; and what merging the adapters costs at export.

    python -m benchmarks.lora                                        # CPU: ViT-Tiny/16 at 96 px, batch 32
    python -m benchmarks.lora --backbone vit_base_patch16_224 --image-size 224 --device cuda

Each strategy runs in a process of its own, so its peak resident memory is its own (measured above the
memory the process held once the model was built). Weights are random: speed and memory do not depend on them.
"""

import argparse
import json
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
from pipeline.data.splits import Split
from pipeline.finetune.loop import seed_everything
from pipeline.finetune.phase import make_optimizer
from pipeline.finetune.strategies import STRATEGIES, apply_phase, count_parameters
from pipeline.model.backbones import build
from pipeline.release.onnx_export import export_checked
from tests.conftest import model_card

CLASSES = 10
STRATEGIES_COMPARED = ["full", "lora", "partial", "norm", "bitfit", "head"]


def step_seconds(args) -> dict:
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
    return {
        "strategy": args.strategy,
        "trainable_params": count_parameters(model, plan.trained_modules),
        "step_seconds": statistics.median(seconds),
        "peak_training_mib": (peak - built_bytes) / 2**20,
        "merge_seconds": merge_seconds(plan, model, args) if args.strategy == "lora" else None,
    }


def merge_seconds(plan, model, args) -> dict:
    """What the adapters cost at export: merging them, then the export with its parity check, of the merged net."""
    started = time.perf_counter()
    merged = plan.finalize(model.cpu().eval())
    merge = time.perf_counter() - started
    card = model_card(image_size=args.image_size, backbone=args.backbone, classes=[str(c) for c in range(CLASSES)])
    images = torch.randint(0, 256, (8, 3, args.image_size, args.image_size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        export_checked(merged, card, images, Path(folder) / "model.onnx", 18, 1e-4)
        export = time.perf_counter() - started
    return {"merge": merge, "export_with_parity": export}


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
        print(json.dumps(step_seconds(args)))
        return
    rows = []
    for strategy in STRATEGIES_COMPARED:
        command = [sys.executable, "-m", "benchmarks.lora", *sys.argv[1:], "--strategy", strategy]
        command = [part for part in command if part != "--out" and part != str(args.out)]
        rows.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
    full = next(row for row in rows if row["strategy"] == "full")
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {machine(torch.device(args.device))}")
    for row in rows:
        share = row["trainable_params"] / full["trainable_params"]
        step, memory = row["step_seconds"], row["peak_training_mib"]
        print(
            f"{row['strategy']:>8}: {row['trainable_params']:>11,} trained ({share:.3f} of full), step {step:.3f} s "
            f"(x{step / full['step_seconds']:.2f} of full), peak training memory +{memory:.0f} MiB "
            f"(x{memory / full['peak_training_mib']:.2f})"
        )
    merge = next(row for row in rows if row["strategy"] == "lora")["merge_seconds"]
    export = merge["export_with_parity"]
    print(f"LoRA at export: merge {merge['merge']:.2f} s, then export with the parity gate {export:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
