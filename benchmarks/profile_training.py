"""Where an epoch of the pipeline's training goes: torch.profiler over `fit` on synthetic photos.

    python -m benchmarks.profile_training                          # CPU, efficientnet_lite0, 96 px
    python -m benchmarks.profile_training --device cuda --backbone resnet50 --image-size 224 \
        --images 2048 --batch-size 256 --trace trace.json            # open the trace in Perfetto

Prints the operators with the most time on the host (the main process: data waits show as
`enumerate(DataLoader)...`) and, on CUDA, on the device; `--out` writes them as JSON with the run's
environment (read by docs/results.py). Run it when a benchmark misses its goal.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import bench_params, folder_split, machine, write_photo_folder
from benchmarks.figures import Operator, ProfileArgs, ProfileResult
from benchmarks.report import capture
from pipeline.finetune.loop import Callbacks, train_model


def top_operators(profiler: profile, rows: int) -> list[Operator]:
    """The `rows` operators with the most self time on the host, then on the device, as the printed tables
    show them: each one's share of all self time, in percent, and its calls."""
    events = list(profiler.key_averages())
    cpu_total = sum(event.self_cpu_time_total for event in events) or 1
    device_total = sum(event.self_device_time_total for event in events) or 1
    ranked = sorted(events, key=lambda event: -event.self_cpu_time_total)[:rows]
    if any(event.self_device_time_total for event in events):  # a CPU run has no device table
        ranked += sorted(events, key=lambda event: -event.self_device_time_total)[:rows]
    chosen = {event.key: event for event in ranked}
    return [
        Operator(
            name=name,
            self_cpu_percent=round(100 * event.self_cpu_time_total / cpu_total, 2),
            self_cuda_percent=round(100 * event.self_device_time_total / device_total, 2),
            calls=event.count,
        )
        for name, event in chosen.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more params.yaml overrides, e.g. --set train.compile=true",
    )
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace here")
    parser.add_argument("--out", type=Path, help="write the epochs' rates and the top operators as JSON here")
    args = parser.parse_args()
    overrides = {key: yaml_value for key, _, yaml_value in (item.partition("=") for item in args.set)}
    params = bench_params(
        **{
            "finetune.strategy": args.strategy,
            "finetune.head_epochs": 2,
            "train.epochs": 2,
            "model.weights": "none",
            "model.backbone": args.backbone,
            "train.image_size": args.image_size,
            "train.batch_size": args.batch_size,
            "train.device": args.device,
        }
        | {key: {"true": True, "false": False}.get(value, value) for key, value in overrides.items()}
    )
    profiled = ProfileArgs(
        **{key: getattr(args, key) for key in ProfileArgs.model_fields if key != "overrides"}, overrides=overrides
    )
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_photo_folder(Path(tmp, "train"), args.images, 10, args.image_size * 4 // 3)
        train = folder_split(folder, args.image_size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        records = []
        train_model(params, [str(i) for i in range(10)], train, train, "benchmark", Callbacks(on_epoch=records.append))
    print(
        f"# benchmarks.profile_training on {machine(device)}: {args.backbone}, {args.strategy}, "
        f"{args.images} images of {args.image_size} px, batch {args.batch_size}, {profiled.overridden}"
    )
    print("training pass images/s per epoch:", ", ".join(f"{r.images_per_second:,.0f}" for r in records))
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if device.type == "cuda":
        print(profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows))
    if args.trace:
        profiler.export_chrome_trace(str(args.trace))
    if args.out:
        rates = [round(record.images_per_second) for record in records]
        operators = top_operators(profiler, args.rows)
        ProfileResult(environment=capture(), args=profiled, images_per_second=rates, operators=operators).write(
            args.out
        )


if __name__ == "__main__":
    main()
