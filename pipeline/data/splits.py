"""The prepared splits as uint8 tensors, held as `data.decoded` says.

    data.decoded: memory   # each process decodes its splits into RAM (fastest for small data)
    data.decoded: disk     # data/decoded/: decoded once, then mapped by every stage and rank (pipeline.data.decoded)
    data.decoded: shards   # LitData shards under data.shards, for several machines (pipeline.data.shards)
    data.decoded: auto     # memory while the decoded arrays are well under the available memory

Every mode decodes with the same `load_rgb`/`resize_square` as prepare and the service, into the same
N x 3 x size x size uint8 layout, so training sees the same pixels, batches and augmentation either way.
"""

import os
from dataclasses import dataclass

import psutil
import torch

from pipeline.data.decoded import decode_into, mapped
from pipeline.data.manifest import class_names
from pipeline.data.shards import ShardImages, streamed

# `auto` keeps the arrays in memory while all the copies this machine's processes would hold take at
# most this share of the available memory: the rest is for the model, activations and the page cache.
MEMORY_SHARE = 0.25


@dataclass
class Split:
    paths: list[str]
    images: torch.Tensor | ShardImages  # uint8, N x 3 x size x size; in memory, mapped or read from shards
    labels: torch.Tensor  # int64 class indices into `classes`


def chosen_mode(setting: str, count: int, size: int) -> str:
    """`memory`, `disk` or `shards` for `count` images of `size` px: `auto` (never shards) counts one
    copy per process on this machine (torchrun's LOCAL_WORLD_SIZE), as each decodes its own in memory."""
    if setting != "auto":
        return setting
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    needed = count * 3 * size * size * processes
    return "memory" if needed <= MEMORY_SHARE * psutil.virtual_memory().available else "disk"


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
