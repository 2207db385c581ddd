"""How many HTTP worker processes to run, when params.yaml's `serving.workers` is null: from the machine's CPU
count and the GPUs present."""

import os
from pathlib import Path

from pipeline.config import ServingConfig

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees (Linux)
MAX_GPU_WORKERS = 8  # 8 front workers on the 16-core H200 served x3.05 one's requests (BENCHMARKS.md)


def gpus_present() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES where it is set, else those the NVIDIA driver lists.
    Not from ONNX Runtime: it lists the CUDA provider on a machine without a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"])
    return len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0


def derived_workers(cpus: int, gpus: int) -> int:
    """On CPU one: its ONNX Runtime session already spreads each call over every core, and a second session
    would contend for them. With a GPU the cores parse, decode and feed the device: one worker per two
    cores, each batching its own requests on its own session."""
    return 1 if gpus == 0 else max(1, min(MAX_GPU_WORKERS, cpus // 2))


def front_workers(settings: ServingConfig) -> int:
    if settings.workers is not None:
        return settings.workers
    return derived_workers(os.cpu_count() or 1, gpus_present())
