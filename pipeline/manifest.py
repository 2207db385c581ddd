"""The prepared split: data/prepared/manifest.csv (written by prepare) and its images as tensors.

Images are decoded and resized once per run with the same `load_rgb`/`resize_square` as prepare and
the service, and kept as one uint8 tensor per split, so epochs after the first never touch the files.
Decoding runs on a thread per core: Pillow lets go of the GIL while it works.
"""

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.images import load_rgb, resize_square
from pipeline.paths import MANIFEST

COLUMNS = ("path", "label", "split", "sha256")
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    paths: list[str]
    images: torch.Tensor  # uint8, N x 3 x size x size
    labels: torch.Tensor  # int64 class indices into `classes`


def write_manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(sorted(rows))


def read_manifest(manifest: Path = MANIFEST) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def fingerprint(manifest: Path = MANIFEST) -> str:
    """SHA-256 of the manifest: the files, their contents (each row has its hash), labels and splits."""
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def split_fingerprint(rows: list[dict], split: str) -> str:
    """SHA-256 of one split's rows (file, label, content hash): two models scored on the same test images."""
    chosen = sorted((row["path"], row["label"], row["sha256"]) for row in rows if row["split"] == split)
    return hashlib.sha256("\n".join(",".join(row) for row in chosen).encode()).hexdigest()


def split_sizes(rows: list[dict]) -> dict[str, int]:
    """Images per split, in SPLITS order."""
    return {split: sum(row["split"] == split for row in rows) for split in SPLITS}


def class_names(rows: list[dict]) -> list[str]:
    return sorted({row["label"] for row in rows})


def load_split(rows: list[dict], split: str, size: int, max_pixels: int) -> Split:
    classes = {name: index for index, name in enumerate(class_names(rows))}
    chosen = [row for row in rows if row["split"] == split]
    images = torch.empty((len(chosen), 3, size, size), dtype=torch.uint8)

    def decode(i: int) -> None:
        images[i] = torch.from_numpy(resize_square(load_rgb(chosen[i]["path"], max_pixels), size))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = pool.map(decode, range(len(chosen)))
        for _ in tqdm(decoded, total=len(chosen), desc=f"decoding {split}", unit="img", disable=None, leave=False):
            pass
    labels = torch.tensor([classes[row["label"]] for row in chosen], dtype=torch.int64)
    return Split([row["path"] for row in chosen], images, labels)


def cap_per_class(split: Split, per_class: int | None, seed: int) -> Split:
    """A seeded subset of at most `per_class` images of each class (the same for every run)."""
    if per_class is None:
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in split.labels.unique():
        members = (split.labels == label).nonzero().flatten()
        keep += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    keep.sort()
    return Split([split.paths[i] for i in keep], split.images[keep], split.labels[keep])
