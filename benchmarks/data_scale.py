"""Data larger than memory: the in-memory path against the decoded cache on disk (pipeline.decoded),
side by side, on synthetic JPEG folders of growing size (issue 15).

    python -m benchmarks.data_scale --images 2000,20000 --out benchmarks/results/DATE-cpu-issue15

For each folder size, each of `data.decoded: memory` and `disk` runs in a fresh process (so its
memory is its own) that: decodes the training split (disk: builds the cache, then maps it again as a
later run would); passes over the whole split once through the training loader (pipeline.loader:
per-image augmentation, batching), twice for disk, the first pass with the cache evicted from the page
cache (cold: read from the disk); trains a few batches of a random-init network (pipeline.training's
step); and records its peak resident memory: in all (VmHWM), private (anonymous) and mapped from
files (shared with the page cache: one copy per machine, whatever the number of processes).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import ROOT, bench_params, machine, write_photo_folder
from pipeline.backbones import build
from pipeline.decoded import load_split
from pipeline.loader import AugmentedImages, ImageBatches
from pipeline.manifest import read_manifest, write_manifest
from pipeline.paths import DECODED_DIR
from pipeline.strategies import apply_phase, full
from pipeline.training import make_augment, make_optimizer, run_batches, seed_everything, warmup_cosine

CLASSES = 10
MAX_PIXELS = 40_000_000


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Samples this process's private and file-mapped resident memory every 10 ms, keeping the peaks
    (the kernel keeps only the peak of their sum, VmHWM)."""

    def __init__(self):
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            for field in self.peaks:
                self.peaks[field] = max(self.peaks[field], status_kib(field))
            time.sleep(0.01)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        mib = 1024
        return {
            "peak_rss_mib": status_kib("VmHWM") / mib,
            "peak_private_mib": self.peaks["RssAnon"] / mib,
            "peak_file_mapped_mib": self.peaks["RssFile"] / mib,
        }


def loader_pass(split, params, epoch: int) -> float:
    """Images/s of one pass over the whole split through the training loader, in a seeded order."""
    batches = ImageBatches(
        AugmentedImages(split.images, split.labels, make_augment(params), params.seed),
        params.train.batch_size,
        0,  # the CPU default (train.loader_workers: auto)
        torch.device("cpu"),
    )
    order = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(epoch))
    started = time.perf_counter()
    for _ in batches(order, epoch):
        pass
    return len(order) / (time.perf_counter() - started)


def training_rate(split, params, steps: int) -> float:
    """Images/s of `steps` training steps of the pipeline's loop on batches drawn across the whole split."""
    cpu = torch.device("cpu")
    seed_everything(params)
    backbone = build(params.model.backbone, "none", CLASSES)
    optimizer = make_optimizer(params, apply_phase(backbone.model, full(params, backbone, split).phases[0]), cpu)
    scheduler = warmup_cosine(optimizer, 0, 10**6)
    batch_size = params.train.batch_size
    batches = ImageBatches(
        AugmentedImages(split.images, split.labels, make_augment(params), params.seed), batch_size, 0, cpu
    )
    order = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))[: steps * batch_size]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    started = time.perf_counter()
    run_batches(backbone.model, batches(order, 99), len(order), batch_size, cpu, loss_fn, optimizer, scheduler)
    return len(order) / (time.perf_counter() - started)


def evict(folder: Path) -> None:
    """Drop the cache's pages from the page cache (no root needed for clean, unmapped pages)."""
    for array in folder.glob("*/images.npy"):
        fd = os.open(array, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(mode: str, manifest: Path, image_size: int, batch_size: int, steps: int, backbone: str) -> dict:
    """One process's figures for `mode` (run in the working directory whose data/decoded is the cache)."""
    memory = PeakMemory()
    params = bench_params(
        **{
            "data.decoded": mode,
            "train.image_size": image_size,
            "train.batch_size": batch_size,
            "train.device": "cpu",
            "model.backbone": backbone,
            "model.weights": "none",
            "finetune.strategy": "full",
        }
    )
    rows = read_manifest(manifest)
    started = time.perf_counter()
    split = load_split(rows, "train", image_size, MAX_PIXELS, mode)
    figures = {"decode_s_per_image": (time.perf_counter() - started) / len(rows)}
    if mode == "disk":
        started = time.perf_counter()
        split = load_split(rows, "train", image_size, MAX_PIXELS, mode)  # as every later run: map, no decoding
        figures["reopen_s"] = time.perf_counter() - started
        evict(DECODED_DIR)
        figures["loader_cold_images_per_s"] = loader_pass(split, params, 1)
    figures["loader_images_per_s"] = loader_pass(split, params, 2)
    figures["train_images_per_s"] = training_rate(split, params, steps)
    return figures | memory.stop()


def write_split(folder: Path, manifest: Path) -> None:
    """The folder's JPEGs as one training split of a manifest, with their contents' hashes, as prepare writes."""
    rows = [
        (str(path), path.parent.name, "train", hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.glob("*/*.jpg"))
    ]
    write_manifest(manifest, rows)


def run_child(mode: str, manifest: Path, workdir: Path, args) -> dict:
    command = [
        sys.executable, "-m", "benchmarks.data_scale", "--child", mode, "--manifest", str(manifest),
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--train-steps", str(args.train_steps), "--backbone", args.backbone,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"} | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def side_by_side(count: int, memory: dict, disk: dict) -> list[str]:
    ratio = {key: disk[key] / memory[key] for key in memory}
    return [
        f"| {count:,} | decode, s per image (disk: building the cache) | {memory['decode_s_per_image'] * 1e3:.3f} ms "
        f"| {disk['decode_s_per_image'] * 1e3:.3f} ms | x{ratio['decode_s_per_image']:.2f} |",
        f"| {count:,} | later runs: open the decoded split | decode again | {disk['reopen_s'] * 1e3:.1f} ms | |",
        f"| {count:,} | loader pass, images/s (warm) | {memory['loader_images_per_s']:,.0f} "
        f"| {disk['loader_images_per_s']:,.0f} | x{ratio['loader_images_per_s']:.2f} |",
        f"| {count:,} | loader pass, images/s (disk: cold, evicted) | | {disk['loader_cold_images_per_s']:,.0f} | |",
        f"| {count:,} | training, images/s | {memory['train_images_per_s']:,.1f} "
        f"| {disk['train_images_per_s']:,.1f} | x{ratio['train_images_per_s']:.2f} |",
        f"| {count:,} | peak RSS, MiB | {memory['peak_rss_mib']:,.0f} | {disk['peak_rss_mib']:,.0f} "
        f"| x{ratio['peak_rss_mib']:.2f} |",
        f"| {count:,} | peak private RSS, MiB | {memory['peak_private_mib']:,.0f} | {disk['peak_private_mib']:,.0f} "
        f"| x{ratio['peak_private_mib']:.2f} |",
        f"| {count:,} | peak file-mapped RSS, MiB | {memory['peak_file_mapped_mib']:,.0f} "
        f"| {disk['peak_file_mapped_mib']:,.0f} | |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="2000,20000", help="comma-separated folder sizes")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=20, help="training steps measured per mode")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--out", type=Path, help="write data_scale.json here")
    parser.add_argument("--child", choices=["memory", "disk"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = measure(args.child, args.manifest, args.image_size, args.batch_size, args.train_steps, args.backbone)
        print(json.dumps(figures))
        return

    about = f"{machine(torch.device('cpu'))}, {os.cpu_count()} cores"
    print(f"# benchmarks.data_scale on {about}: {args.image_size} px, batch {args.batch_size}, {args.backbone}")
    print("| images | measurement | memory | disk (cache) | disk / memory |\n|---|---|---|---|---|", flush=True)
    results = []
    for count in [int(n) for n in args.images.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            folder = write_photo_folder(Path(tmp, "photos"), count, CLASSES, args.image_size * 4 // 3)
            manifest = Path(tmp, "manifest.csv")
            write_split(folder, manifest)
            written = time.perf_counter() - started
            figures = {mode: run_child(mode, manifest, Path(tmp), args) for mode in ("memory", "disk")}
            cache_bytes = sum(p.stat().st_size for p in Path(tmp, DECODED_DIR).rglob("*") if p.is_file())
        print("\n".join(side_by_side(count, figures["memory"], figures["disk"])), flush=True)
        results.append({"images": count, "folder_written_s": written, "cache_bytes": cache_bytes} | figures)
    if len(results) > 1:
        first, last = results[0]["disk"], results[-1]["disk"]
        print(
            f"cache build time per image, {results[-1]['images']:,} against {results[0]['images']:,} images: "
            f"x{last['decode_s_per_image'] / first['decode_s_per_image']:.2f}; peak private RSS of the disk "
            f"path: x{last['peak_private_mib'] / first['peak_private_mib']:.2f}"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_scale.json").write_text(
            json.dumps({"machine": about, "args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
