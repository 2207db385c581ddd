"""The decoded splits as LitData shards, for training on several machines (data.decoded: shards).

    python -m pipeline.commands.shards                      # train, val and test at train.image_size into data.shards
    python -m pipeline.commands.shards --out /mnt/shared/shards --chunk-bytes 16MB
    torchrun --nnodes 2 --node_rank 0|1 --rdzv_backend c10d --rdzv_endpoint HOST:PORT \\
        --nproc_per_node 8 -m pipeline.stages.train       # with data.decoded: shards, data.shards: s3://bucket/shards

A split's shards hold what its decoded cache (pipeline.data.decoded) holds: per image the uint8
3 x size x size pixels from the same `load_rgb`/`resize_square` and its label index, in manifest
order, plus rows.csv (the manifest rows they came from, in that order). They sit in a folder named like the cache's,
`<split>-<size>px-<hash of everything the pixels depend on>`, so changed data or another image size
is another folder and stale shards are never read. The folder appears by an atomic rename once
complete; a killed write leaves only a hidden `.partial` folder that no reader opens.

`data.shards` is where they are read from: a folder (a shared file system: read in place), an object
store URL LitData streams from (`s3://`, `gs://`, `azure://`), or `local:/path`, a folder read as if it
were an object store (what the tests use to stand in for one). Only a folder or `local:` is written
here; for an object store, write a folder and copy it (e.g. `aws s3 sync`) to the URL.

Images are read by index, in the order and shares of pipeline.finetune.batches (the same global order on every
rank, cut by rank), so batches and augmentation are bit-identical to the in-memory path. Each rank
reads only the images of its shares, each by its own byte range: LitData does so from S3, R2 and GCS
(from Azure it copies the whole chunk into this node's cache, data/shards-cache/node-<torchrun
GROUP_RANK>), and `local:` is read the same way here (RangedLocalReads), as the object store it stands in for.
"""

import csv
import os
import sys
from functools import cache, partial
from pathlib import Path

import torch
from filelock import FileLock

from pipeline.atomic import atomic_dir
from pipeline.data.decoded import folder_name
from pipeline.data.images import load_rgb, resize_square
from pipeline.data.manifest import COLUMNS
from pipeline.paths import project_root

LOCAL_AS_REMOTE = "local:"  # LitData's prefix for a folder read through its downloader, like an object store
CACHE_DIR = Path("data/shards-cache")  # each node's copies of fetched chunks, under project_root()
DEFAULT_CHUNK_BYTES = "64MB"  # LitData's default: fewer, larger reads from an object store


@cache  # once per process: LitData keeps the registration in a module-level table
def use_ranged_local_reads() -> None:
    """Register a `local:` downloader that reads an item's own byte range as LitData's S3, R2 and GCS ones do,
    where LitData 0.2.76 copies the item's whole chunk into the cache first (Downloader.download_bytes)."""
    from litdata.streaming.downloader import LocalDownloaderWithCache, register_downloader

    class RangedLocalReads(LocalDownloaderWithCache):
        def download_bytes(self, remote_chunkpath: str, offset: int, length: int, local_chunkpath: str) -> bytes:
            with open(remote_chunkpath.removeprefix(LOCAL_AS_REMOTE), "rb") as f:
                f.seek(offset)
                return f.read(length)

    register_downloader(LOCAL_AS_REMOTE, RangedLocalReads, overwrite=True)


def writable_path(location: str) -> Path | None:
    """The local folder behind `location` (a folder or `local:` one), None for an object store URL."""
    if location.startswith(LOCAL_AS_REMOTE):
        return project_root() / location.removeprefix(LOCAL_AS_REMOTE)
    if "://" in location:
        return None
    return project_root() / location  # relative to the project, as every other path of params.yaml


def decoded_item(row_and_label: tuple[dict, int], size: int, max_pixels: int) -> dict:
    """One shard item; run by LitData's worker processes (module level, so it can be pickled)."""
    row, label = row_and_label
    pixels = torch.from_numpy(resize_square(load_rgb(row["path"], max_pixels), size))
    return {"image": pixels, "label": label}  # no path: LitData would take a str ending in .png for a file to embed


def write(folder: Path, rows: list[dict], labels: list[int], size: int, max_pixels: int, chunk_bytes: str) -> None:
    """Write one split's shards all-or-nothing, decoding on every core (LitData's optimize, in order)."""
    from litdata import optimize  # imported here: 1.5 s that the memory and disk paths do not pay

    print(f"writing {len(rows):,} images at {size} px as shards into {folder}", flush=True)
    with atomic_dir(folder) as partial_dir:
        optimize(
            fn=partial(decoded_item, size=size, max_pixels=max_pixels),
            inputs=list(zip(rows, labels, strict=True)),
            output_dir=str(partial_dir),
            chunk_bytes=chunk_bytes,
            num_workers=os.cpu_count(),
            keep_data_ordered=True,  # item i is manifest row i: the index pipeline.finetune.batches asks for
            # fork, not spawn: a spawned worker imports the caller's __main__ again (a torchrun rank's
            # script, a test runner), which can die before it reports, and then optimize waits forever
            start_method="fork",
            # its progress bar where ours show (a terminal): with TQDM_DISABLE set (tests, benchmarks) it
            # raises AttributeError in LitData 0.2.76 and leaves the workers waiting
            verbose=sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE"),
        )
        with open(partial_dir / "rows.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for path in partial_dir.iterdir():  # on disk before the rename makes it visible
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def ensure(location: str, rows, classes, size: int, max_pixels: int, what: str, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """The URL of the split's shards under `location`, written first if it is a folder that lacks them."""
    name = folder_name(rows, classes, size, what)
    root = writable_path(location)
    if root is None:  # an object store: written elsewhere and copied there; opening it checks it is there
        return f"{location.rstrip('/')}/{name}"
    if not (root / name).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(root / f".{name}.lock"):
            if not (root / name).is_dir():  # another process (rank, node) may have written it meanwhile
                index = {label: i for i, label in enumerate(classes)}
                labels = [index[row["label"]] for row in rows]
                write(root / name, rows, labels, size, max_pixels, chunk_bytes)
    prefix = LOCAL_AS_REMOTE if location.startswith(LOCAL_AS_REMOTE) else ""
    return f"{prefix}{root / name}"


class ShardImages:
    """A split's images read from its shards by index: what training and evaluation take of a uint8
    N x 3 x size x size tensor (an image, a slice or a list of indices; length and shape)."""

    def __init__(self, url: str, count: int, size: int):
        from litdata import StreamingDataset

        use_ranged_local_reads()
        cache = project_root() / CACHE_DIR / f"node-{os.environ.get('GROUP_RANK', '0')}"  # torchrun's node rank
        try:
            self.dataset = StreamingDataset(url, cache_dir=str(cache))
        except (FileNotFoundError, ValueError) as exc:
            raise FileNotFoundError(
                f"data.shards: no shards at {url} ({exc}); write them with "
                "`python -m pipeline.commands.shards --out DIR` "
                "and copy DIR's folders there"
            ) from None
        self.shape = (count, 3, size, size)  # its name's hash covers the rows: no need to count them

    def __len__(self) -> int:
        return self.shape[0]

    def image(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)  # also ends iteration, as over a tensor
        return self.dataset[index]["image"]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return self.image(int(index))
        indices = range(*index.indices(len(self))) if isinstance(index, slice) else torch.as_tensor(index).tolist()
        if not indices:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([self.image(i) for i in indices])


def streamed(rows, classes, size: int, max_pixels: int, what: str, location: str) -> ShardImages:
    """The images of `rows` read from their shards under `location` (written first if it is a folder)."""
    if not location:
        raise ValueError("data.shards must name where the shards are when data.decoded is shards")
    return ShardImages(ensure(location, rows, classes, size, max_pixels, what), len(rows), size)
