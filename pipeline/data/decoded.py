"""Decoding the prepared images into uint8 arrays: in memory, or once into a content-addressed cache folder on
disk that every process maps (`data.decoded: disk`; pipeline.data.splits chooses). Why a cache folder and not
a DVC output, and how concurrent builders wait for one build: docs/teams.md#data-larger-than-memory-the-decoded-cache.
Decoding runs on a thread per core: Pillow lets go of the GIL while it works.
"""

import csv
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from pipeline.atomic import atomic_dir
from pipeline.data import images as images_module
from pipeline.data.images import load_rgb, resize_square
from pipeline.data.manifest import COLUMNS
from pipeline.paths import DECODED_DIR, project_root
from pipeline.progress import progress

# What the cached pixels depend on besides the rows and the size: the decoding code itself.
DECODER_SOURCE = Path(images_module.__file__).read_bytes()


def decode_into(target: np.ndarray, rows: list[dict], size: int, max_pixels: int, what: str) -> None:
    """Decode the images of `rows` into `target` (N x 3 x size x size uint8), one thread per core."""

    def decode(i: int) -> None:
        target[i] = resize_square(load_rgb(rows[i]["path"], max_pixels), size)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = pool.map(decode, range(len(rows)))
        for _ in progress(decoded, f"decoding {what}", total=len(rows), unit="img"):
            pass


def cache_key(rows: list[dict], classes: list[str], size: int) -> str:
    """SHA-256 of everything the decoded pixels and labels depend on."""
    digest = hashlib.sha256(DECODER_SOURCE)
    digest.update(json.dumps({"size": size, "classes": classes}).encode())
    for row in rows:
        digest.update(f"\n{row['path']}\0{row['label']}\0{row['sha256']}".encode())
    return digest.hexdigest()


def folder_name(rows: list[dict], classes: list[str], size: int, what: str) -> str:
    """The content-addressed name of a split's cache folder (and of its shards'): `<split>-<size>px-<hash>`."""
    return f"{what.replace('+', '-')}-{size}px-{cache_key(rows, classes, size)[:24]}"


def build(folder: Path, rows: list[dict], labels: torch.Tensor, size: int, max_pixels: int, what: str) -> None:
    """Write the cache folder all-or-nothing: a build that fails or is killed leaves no `folder`."""
    print(f"decoding {len(rows):,} {what} images at {size} px into {folder} (once: later runs map it)", flush=True)
    with atomic_dir(folder) as partial:
        shape = (len(rows), 3, size, size)
        pixels = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        decode_into(pixels, rows, size, max_pixels, what)
        pixels.flush()
        del pixels
        np.save(partial / "labels.npy", labels.numpy())
        with open(partial / "rows.csv", "w", newline="") as f:  # the manifest rows it came from, in order
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for name in ("images.npy", "labels.npy", "rows.csv"):  # on disk before the rename makes it visible
            with open(partial / name, "rb") as f:
                os.fsync(f.fileno())


def mapped(rows: list[dict], classes: list[str], labels: torch.Tensor, size: int, max_pixels: int, what: str):
    """The images of `rows` mapped from their cache folder, built first if no complete one exists."""
    root = project_root() / DECODED_DIR  # DVC's temporary experiment copies share the project's cache
    folder = root / folder_name(rows, classes, size, what)
    if not folder.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(root / f".{folder.name}.lock"):  # the kernel releases it if the process dies
            if not folder.is_dir():  # another process may have built it while this one waited
                build(folder, rows, labels, size, max_pixels, what)
    # copy-on-write mapping: pages are shared with the page cache (one copy per machine) and the
    # tensor is writable, which torch requires; nothing here writes to it
    pixels = np.load(folder / "images.npy", mmap_mode="c")
    return torch.from_numpy(pixels), torch.from_numpy(np.load(folder / "labels.npy"))
