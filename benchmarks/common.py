"""What the benchmark scripts share: synthetic photo folders, run settings, device-aware timing."""

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import Params, parse_params, read_yaml, with_overrides
from pipeline.data.splits import Split, load_split

ROOT = Path(__file__).resolve().parents[1]


def write_photo_folder(folder: Path, images: int, classes: int, size: int, seed: int = 0) -> Path:
    """`images` JPEGs of `size` px in `classes` class folders: smooth random colour fields, so they
    decode about as fast as camera photos of that size (pure noise would decode slower)."""
    rng = np.random.default_rng(seed)
    for index in range(images):
        label = f"class{index % classes}"
        (folder / label).mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / label / f"{index:06d}.jpg", quality=90)
    return folder


def folder_split(folder: Path, image_size: int) -> Split:
    """Every image of a class folder as one in-memory uint8 split, decoded as the pipeline does."""
    rows = [{"path": str(p), "label": p.parent.name, "split": "train"} for p in sorted(folder.glob("*/*.jpg"))]
    return load_split(rows, "train", image_size, 40_000_000, "memory")


def bench_params(**overrides) -> Params:
    """params.yaml with `section.key` overrides (the benchmarks' runs differ only where they say)."""
    raw = read_yaml(ROOT / "params.yaml")
    return parse_params(with_overrides(raw, overrides), "benchmark settings")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_of(fn, device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
