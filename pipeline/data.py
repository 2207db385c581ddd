"""The prepared split as tensors: the manifest written by prepare, decoded once per run.

Images are decoded with the same `load_rgb` as prepare and resized once to the model's input
size, then kept as one uint8 tensor per split, so epochs after the first never touch the files.
Decoding runs on a thread per core: Pillow and torch let go of the GIL while they work.
"""

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.images import load_rgb, resize_square
from pipeline.prepare import MANIFEST


@dataclass
class Split:
    paths: list[str]
    images: torch.Tensor  # uint8, N x 3 x size x size
    labels: torch.Tensor  # int64 class indices into `classes`


def read_manifest(manifest: Path = MANIFEST) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def class_names(rows: list[dict]) -> list[str]:
    return sorted({row["label"] for row in rows})


def load_split(rows: list[dict], split: str, size: int, max_pixels: int) -> Split:
    classes = {name: index for index, name in enumerate(class_names(rows))}
    chosen = [row for row in rows if row["split"] == split]
    images = torch.empty((len(chosen), 3, size, size), dtype=torch.uint8)

    def decode(i: int) -> None:
        images[i] = resize_square(load_rgb(chosen[i]["path"], max_pixels), size)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = pool.map(decode, range(len(chosen)))
        for _ in tqdm(decoded, total=len(chosen), desc=f"decoding {split}", unit="img", disable=None, leave=False):
            pass
    labels = torch.tensor([classes[row["label"]] for row in chosen], dtype=torch.int64)
    return Split([row["path"] for row in chosen], images, labels)
