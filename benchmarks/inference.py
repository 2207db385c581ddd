"""Model-side inference speed: ONNX Runtime on the exported graph against PyTorch eager, side by side.

    python -m benchmarks.inference                              # CPU, the sizes of `make bench`
    python -m benchmarks.inference --device cuda --batches 1,32,64 --repeat-seconds 3   # `make bench-gpu`

Each backbone is exported by the pipeline's own `pipeline.release.onnx_export.export_onnx` (float32, and float16 as with
`export.fp16`), then timed on the same random batch: PyTorch eager (float32; on CUDA also float16
and channels_last), ONNX Runtime CPU, and on a GPU machine ONNX Runtime's CUDA provider (input
bound on the device) and TensorRT when they load. Softmax is part of both sides. Images/s is
batch size over the median time of one call, after warm-up, repeated for --repeat-seconds.
"""

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import machine, sync
from benchmarks.figures import InferenceResult, InferenceRow
from benchmarks.report import capture
from pipeline.model.backbones import build
from pipeline.model.card import ModelCard
from pipeline.release.onnx_export import WithSoftmax, export_onnx

CLASSES = 10
NOT_LOADED: dict[str, str] = {}  # provider: why it does not run here, as ONNX Runtime said


def median_seconds(call, device: torch.device, repeat_seconds: float) -> float:
    for _ in range(3):
        call()
    times = []
    deadline = time.perf_counter() + repeat_seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        sync(device)
        started = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ort_session(path: Path, provider: str) -> tuple[ort.InferenceSession | None, str]:
    """(the session, "") when `provider` really runs it, else (None, why not), ONNX Runtime's own words."""
    options = {"trt_fp16_enable": True} if provider == "TensorrtExecutionProvider" else {}
    fallback = [] if provider == "CPUExecutionProvider" else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), providers=[(provider, options), *fallback])
    except Exception as exc:  # noqa: BLE001  (ORT raises its own pybind classes) a provider that cannot start here
        return None, str(exc).splitlines()[0]
    if session.get_providers()[0] != provider:
        return None, f"did not load (the session fell back to {session.get_providers()[0]}; its log above says why)"
    return session, ""


def ort_call(session: ort.InferenceSession, batch: np.ndarray):
    """A zero-argument call running the session on `batch`."""
    if session.get_providers()[0] == "CPUExecutionProvider":
        return lambda: session.run(None, {"image": batch})
    binding = session.io_binding()  # model-side: the input already on the device, the output stays there
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
    binding.bind_output("probabilities", "cuda")
    return lambda: session.run_with_iobinding(binding)


def measure(
    name: str, image_size: int, batches: list[int], device: torch.device, repeat_seconds: float, tmp: Path
) -> list[InferenceRow]:
    torch.manual_seed(0)
    backbone = build(name, "none", CLASSES)
    model = WithSoftmax(backbone.model).eval()
    card = ModelCard(
        classes=[str(i) for i in range(CLASSES)],
        image_size=image_size,
        mean=backbone.mean,
        std=backbone.std,
        backbone=name,
        weights="none",
        strategy="full",
        data_source="benchmark",
        data_fingerprint="benchmark",
    )
    paths = {"fp32": tmp / f"{name}.onnx", "fp16": tmp / f"{name}.fp16.onnx"}
    for precision, path in paths.items():
        export_onnx(backbone.model, card, path, 18, fp16=precision == "fp16")
    providers = {"CPUExecutionProvider": "ort cpu"}
    if device.type == "cuda":
        providers = {"CUDAExecutionProvider": "ort cuda", "TensorrtExecutionProvider": "ort tensorrt"}
    sessions = {}  # one per provider and graph, opened once: CUDA's and TensorRT's start-up is seconds
    for provider, short in providers.items():
        for precision, path in paths.items():
            sessions[f"{short} {precision}"], why_not = ort_session(path, provider)
            if why_not and provider not in NOT_LOADED:
                NOT_LOADED[provider] = why_not
                print(f"  {provider}: {why_not}", flush=True)
    rows = []
    for batch_size in batches:
        batch = np.random.default_rng(batch_size).integers(0, 256, (batch_size, 3, image_size, image_size), np.uint8)
        row = {"backbone": name, "batch": batch_size}
        on_device = torch.from_numpy(batch).to(device)
        variants = {"torch fp32": (model.to(device).float(), on_device)}
        if device.type == "cuda":
            half = copy.deepcopy(model).to(device, memory_format=torch.channels_last).half()
            variants["torch fp16 channels_last"] = (half, on_device.contiguous(memory_format=torch.channels_last))
        for label, (net, inputs) in variants.items():
            with torch.inference_mode():
                row[label] = batch_size / median_seconds(
                    lambda net=net, inputs=inputs: net(inputs), device, repeat_seconds
                )
        for label, session in sessions.items():
            row[label] = (
                batch_size / median_seconds(ort_call(session, batch), device, repeat_seconds) if session else None
            )
        print(
            f"  {name} batch {batch_size}: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in row.items() if isinstance(v, float)),
            flush=True,
        )
        rows.append(InferenceRow.model_validate(row))  # keyed by the columns' names, benchmarks/figures.py's aliases
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeat-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"# benchmarks.inference on {machine(device)}, ONNX Runtime {ort.__version__} "
        f"({', '.join(ort.get_available_providers())}), {args.image_size} px",
        flush=True,
    )
    ort.set_default_logger_severity(3)  # errors: why a GPU provider does not load is printed once
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            rows += measure(
                name, args.image_size, [int(b) for b in args.batches.split(",")], device, args.repeat_seconds, Path(tmp)
            )
            if args.out:  # after each backbone: a run cut short keeps what it measured
                InferenceResult(environment=capture(), not_loaded=NOT_LOADED, rows=rows).write(args.out)
    measured = [row.model_dump(by_alias=True, exclude_unset=True, exclude={"backbone", "batch"}) for row in rows]
    print("\nimages/s (model-side; '-' where the provider does not load here)")
    print("| backbone | batch | " + " | ".join(measured[0]) + " | ONNX Runtime fp32 / torch fp32 |")
    print("|---|---|" + "---|" * (len(measured[0]) + 1))
    for row, figures in zip(rows, measured, strict=True):
        cells = [f"{value:,.0f}" if value else "-" for value in figures.values()]
        ort_fp32 = row.ort_cpu_fp32 if device.type == "cpu" else row.ort_cuda_fp32
        ratio = f"x{ort_fp32 / row.torch_fp32:.2f}" if ort_fp32 else "-"
        print(f"| {row.backbone} | {row.batch} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
