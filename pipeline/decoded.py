"""The prepared images as uint8 tensors: decoded in memory, or once into a cache on disk that every
process maps.

    data.decoded: memory   # each process decodes its splits into RAM (fastest for small data)
    data.decoded: disk     # data/decoded/: decoded once, then memory-mapped by every stage and rank
    data.decoded: shards   # LitData shards under data.shards, for several machines (pipeline/shards.py)
    data.decoded: auto     # memory while the decoded arrays are well under the available memory

Both decode with the same `load_rgb`/`resize_square` as prepare and the service, into the same
N x 3 x size x size uint8 layout, so training sees the same pixels, batches and augmentation either way.
Decoding runs on a thread per core: Pillow lets go of the GIL while it works.

The cache is content-addressed rather than a DVC output: a folder's name is a hash of what its pixels
depend on (the chosen manifest rows, each with its file's SHA-256, the class list, the image size and
the decoding code), so a changed file, split or image size gives another folder and a stale array is
never found, whichever stage, `compare` size or benchmark asks. As a DVC output it would be copied
into DVC's cache and pushed to remotes (a derived array the size of the data), it could serve only
one image size (compare and verdict ask for others), and `data.decoded: memory` would still build it.
A folder appears by an atomic rename once complete; a file lock makes concurrent builders (torchrun
ranks, queued experiments) wait for one build instead of racing. Deleting data/decoded is always safe.
"""

import csv
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import torch
from tqdm import tqdm

from pipeline import images as images_module
from pipeline.atomic import atomic_dir
from pipeline.images import load_rgb, resize_square
from pipeline.manifest import COLUMNS, class_names
from pipeline.paths import DECODED_DIR, project_root

if TYPE_CHECKING:
    from pipeline.shards import ShardImages

# `auto` keeps the arrays in memory while all the copies this machine's processes would hold take at
# most this share of the available memory: the rest is for the model, activations and the page cache.
MEMORY_SHARE = 0.25
# What the cached pixels depend on besides the rows and the size: the decoding code itself.
DECODER_SOURCE = Path(images_module.__file__).read_bytes()


@dataclass
class Split:
    paths: list[str]
    images: "torch.Tensor | ShardImages"  # uint8, N x 3 x size x size; in memory, mapped or read from shards
    labels: torch.Tensor  # int64 class indices into `classes`


def chosen_mode(setting: str, count: int, size: int) -> str:
    """`memory`, `disk` or `shards` for `count` images of `size` px: `auto` (never shards) counts one
    copy per process on this machine (torchrun's LOCAL_WORLD_SIZE), as each decodes its own in memory."""
    if setting != "auto":
        return setting
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    needed = count * 3 * size * size * processes
    return "memory" if needed <= MEMORY_SHARE * psutil.virtual_memory().available else "disk"


def decode_into(target: np.ndarray, rows: list[dict], size: int, max_pixels: int, what: str) -> None:
    """Decode the images of `rows` into `target` (N x 3 x size x size uint8), one thread per core."""

    def decode(i: int) -> None:
        target[i] = resize_square(load_rgb(rows[i]["path"], max_pixels), size)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = pool.map(decode, range(len(rows)))
        for _ in tqdm(decoded, total=len(rows), desc=f"decoding {what}", unit="img", disable=None, leave=False):
            pass


def cache_key(rows: list[dict], classes: list[str], size: int) -> str:
    """SHA-256 of everything the decoded pixels and labels depend on."""
    digest = hashlib.sha256(DECODER_SOURCE)
    digest.update(json.dumps({"size": size, "classes": classes}).encode())
    for row in rows:
        digest.update(f"\n{row['path']}\0{row['label']}\0{row['sha256']}".encode())
    return digest.hexdigest()


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`; the kernel releases it if the process dies."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


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
    key = cache_key(rows, classes, size)
    folder = root / f"{what.replace('+', '-')}-{size}px-{key[:24]}"
    if not folder.is_dir():
        with exclusive(root / f".{folder.name}.lock"):
            if not folder.is_dir():  # another process may have built it while this one waited
                build(folder, rows, labels, size, max_pixels, what)
    # copy-on-write mapping: pages are shared with the page cache (one copy per machine) and the
    # tensor is writable, which torch requires; nothing here writes to it
    pixels = np.load(folder / "images.npy", mmap_mode="c")
    return torch.from_numpy(pixels), torch.from_numpy(np.load(folder / "labels.npy"))


def load_rows(
    rows: list[dict], classes: list[str], size: int, max_pixels: int, decoded: str, what: str, shards: str = ""
) -> Split:
    """The images of `rows` (manifest rows, in that order) at `size` px, labelled by index into `classes`;
    `shards` is data.shards, read when `decoded` is shards."""
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[row["label"]] for row in rows], dtype=torch.int64)
    mode = chosen_mode(decoded, len(rows), size)
    if mode == "disk":
        images, labels = mapped(rows, classes, labels, size, max_pixels, what)
    elif mode == "shards":
        from pipeline.shards import streamed  # imported here: it imports this module, and LitData

        images = streamed(rows, classes, size, max_pixels, what, shards)
    else:
        images = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        decode_into(images.numpy(), rows, size, max_pixels, what)
    return Split([row["path"] for row in rows], images, labels)


def load_split(rows: list[dict], split: str, size: int, max_pixels: int, decoded: str, shards: str = "") -> Split:
    """One split of the manifest `rows`, in manifest order; `decoded` and `shards` are data.decoded and data.shards."""
    chosen = [row for row in rows if row["split"] == split]
    return load_rows(chosen, class_names(rows), size, max_pixels, decoded, split, shards)


def cap_per_class(rows: list[dict], per_class: int | None, seed: int) -> list[dict]:
    """A seeded subset of at most `per_class` rows of each class (the same for every run), in their
    order, chosen before decoding so that only those images are decoded."""
    if per_class is None:
        return rows
    index = {name: i for i, name in enumerate(class_names(rows))}
    labels = torch.tensor([index[row["label"]] for row in rows])
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        keep += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return [rows[i] for i in sorted(keep)]
