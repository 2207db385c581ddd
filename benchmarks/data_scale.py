"""Data larger than memory: the in-memory path against the decoded cache on disk (pipeline.data.decoded)
and LitData shards (pipeline.data.shards), side by side, on synthetic JPEG folders of growing size (issue 15).

    python -m benchmarks.data_scale --images 2000,20000 --out benchmarks/results/cpu-data-scale
    python -m benchmarks.data_scale --images 200 --modes memory,shards   # a quick check

For each folder size, each of `data.decoded: memory` and `disk` runs in a fresh process (so its
memory is its own) that: decodes the training split (disk: builds the cache, then maps it again as a
later run would); passes over the whole split once through the training loader (pipeline.finetune.batches:
per-image augmentation, batching), twice for disk, the first pass with the cache evicted from the page
cache (cold: read from the disk); trains a few batches of a random-init network (pipeline.finetune.loop's
step); and records its peak resident memory: in all (VmHWM), private (anonymous) and mapped from
files (shared with the page cache: one copy per machine, whatever the number of processes).
`shards` writes the split as shards into a local folder (its build), then reads them again as a later
run would. `disk-2ranks` runs two `disk` processes at once on the cache built before, as two ranks
of one machine map it (each passes over the whole split, not half): their peak memory against one's.
"""

import argparse
import hashlib
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
from benchmarks.figures import DataScaleArgs, DataScaleResult, ModeFigures, ScaleEntry, TwoRanks
from benchmarks.report import capture
from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.data.splits import load_split
from pipeline.finetune.batches import AugmentedImages, ImageBatches
from pipeline.finetune.loop import run_batches, seed_everything
from pipeline.finetune.phase import make_augment, make_optimizer, warmup_cosine
from pipeline.finetune.strategies import apply_phase, full
from pipeline.model.backbones import build
from pipeline.paths import DECODED_DIR

CLASSES = 10
MAX_PIXELS = 40_000_000
SHARDS_DIR = Path("data/shards")  # a local folder, read in place (a shared file system's case)
MODES = ("memory", "disk", "shards", "disk-2ranks")


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


def measure(mode: str, manifest: Path, image_size: int, batch_size: int, steps: int, backbone: str) -> ModeFigures:
    """One process's figures for `mode` (run in the working directory whose data/decoded is the cache,
    and data/shards the shards)."""
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
    split = load_split(rows, "train", image_size, MAX_PIXELS, mode, str(SHARDS_DIR))
    figures = {"decode_s_per_image": (time.perf_counter() - started) / len(rows)}
    if mode in ("disk", "shards"):
        started = time.perf_counter()
        split = load_split(rows, "train", image_size, MAX_PIXELS, mode, str(SHARDS_DIR))  # a later run's: no decoding
        figures["reopen_s"] = time.perf_counter() - started
    if mode == "disk":
        evict(DECODED_DIR)
        figures["loader_cold_images_per_s"] = loader_pass(split, params, 1)
    figures["loader_images_per_s"] = loader_pass(split, params, 2)
    figures["train_images_per_s"] = training_rate(split, params, steps)
    return ModeFigures(**figures | memory.stop())


def write_split(folder: Path, manifest: Path) -> None:
    """The folder's JPEGs as one training split of a manifest, with their contents' hashes, as prepare writes."""
    rows = [
        (str(path), path.parent.name, "train", hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.glob("*/*.jpg"))
    ]
    write_manifest(manifest, rows)


def child(mode: str, manifest: Path, workdir: Path, args) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "benchmarks.data_scale", "--child", mode, "--manifest", str(manifest),
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--train-steps", str(args.train_steps), "--backbone", args.backbone,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"} | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def figures_of(process: subprocess.Popen) -> ModeFigures:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(process.args)} failed:\n{stderr[-3000:]}")
    return ModeFigures.model_validate_json(stdout.strip().splitlines()[-1])


def run_mode(mode: str, manifest: Path, workdir: Path, args) -> ModeFigures | TwoRanks:
    """One mode's figures; for disk-2ranks, both processes' (started together, after disk built the cache)."""
    if mode == "disk-2ranks":
        ranks = [child("disk", manifest, workdir, args) for _ in range(2)]
        return TwoRanks(ranks=[figures_of(rank) for rank in ranks])
    return figures_of(child(mode, manifest, workdir, args))


def side_by_side(count: int, memory: ModeFigures, disk: ModeFigures) -> list[str]:
    ratio = disk.over(memory)
    return [
        f"| {count:,} | decode, s per image (disk: building the cache) | {memory.decode_ms:.3f} ms "
        f"| {disk.decode_ms:.3f} ms | x{ratio['decode_s_per_image']:.2f} |",
        f"| {count:,} | later runs: open the decoded split | decode again | {disk.reopen_ms:.1f} ms | |",
        f"| {count:,} | loader pass, images/s (warm) | {memory.loader_images_per_s:,.0f} "
        f"| {disk.loader_images_per_s:,.0f} | x{ratio['loader_images_per_s']:.2f} |",
        f"| {count:,} | loader pass, images/s (disk: cold, evicted) | | {disk.loader_cold_images_per_s:,.0f} | |",
        f"| {count:,} | training, images/s | {memory.train_images_per_s:,.1f} "
        f"| {disk.train_images_per_s:,.1f} | x{ratio['train_images_per_s']:.2f} |",
        f"| {count:,} | peak RSS, MiB | {memory.peak_rss_mib:,.0f} | {disk.peak_rss_mib:,.0f} "
        f"| x{ratio['peak_rss_mib']:.2f} |",
        f"| {count:,} | peak private RSS, MiB | {memory.peak_private_mib:,.0f} | {disk.peak_private_mib:,.0f} "
        f"| x{ratio['peak_private_mib']:.2f} |",
        f"| {count:,} | peak file-mapped RSS, MiB | {memory.peak_file_mapped_mib:,.0f} "
        f"| {disk.peak_file_mapped_mib:,.0f} | |",
    ]


def others(entry: ScaleEntry) -> list[str]:
    """Shards against memory, and two processes on the cache against one."""
    lines, count, shards = [], entry.images, entry.shards
    if shards:
        against = (lambda key: f"x{entry.shards_vs_memory[key]:.2f}") if entry.memory else (lambda key: "")
        lines += [
            f"| {count:,} | shards: write, s per image | {shards.decode_ms:.3f} ms "
            f"| {against('decode_s_per_image')} of decoding in memory |",
            f"| {count:,} | shards: open again | {shards.reopen_ms:.1f} ms | |",
            f"| {count:,} | shards: loader pass, images/s (warm) | {shards.loader_images_per_s:,.0f} "
            f"| {against('loader_images_per_s')} of memory |",
            f"| {count:,} | shards: training, images/s | {shards.train_images_per_s:,.1f} "
            f"| {against('train_images_per_s')} of memory |",
            f"| {count:,} | shards: peak RSS / private, MiB | {shards.peak_rss_mib:,.0f} "
            f"/ {shards.peak_private_mib:,.0f} | |",
        ]
    for rank, two in enumerate(entry.two_ranks.ranks if entry.two_ranks else []):
        against = f"x{two.peak_rss_mib / entry.disk.peak_rss_mib:.2f} of one process's" if entry.disk else ""
        lines.append(
            f"| {count:,} | 2 processes on the cache, process {rank}: peak RSS / private, MiB "
            f"| {two.peak_rss_mib:,.0f} / {two.peak_private_mib:,.0f} | {against} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="2000,20000", help="comma-separated folder sizes")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=20, help="training steps measured per mode")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--out", type=Path, help="write data_scale.json here")
    parser.add_argument("--child", choices=["memory", "disk", "shards"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if "disk-2ranks" in modes and "disk" not in modes:
        parser.error("--modes: disk-2ranks needs disk (which builds the cache it maps, and is its reference)")
    if args.child:
        figures = measure(args.child, args.manifest, args.image_size, args.batch_size, args.train_steps, args.backbone)
        print(figures.model_dump_json())
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
            figures = {mode: run_mode(mode, manifest, Path(tmp), args) for mode in modes}
            stored = {
                f"{name}_bytes": sum(p.stat().st_size for p in Path(tmp, folder).rglob("*") if p.is_file())
                for name, folder in (("cache", DECODED_DIR), ("shards", SHARDS_DIR))
            }
        entry = ScaleEntry.model_validate({"images": count, "folder_written_s": written} | stored | figures)
        if entry.memory and entry.disk:
            print("\n".join(side_by_side(count, entry.memory, entry.disk)), flush=True)
        print("\n".join(others(entry)), flush=True)
        results.append(entry)
    settings = DataScaleArgs(**vars(args) | {"out": str(args.out)})
    result = DataScaleResult(environment=capture(), args=settings, results=results)
    if len(results) > 1 and "disk" in modes:
        print(
            f"cache build time per image, {result.last.images:,} against {result.first.images:,} images: "
            f"x{result.cache_build_growth:.2f}; peak private RSS of the disk path: x{result.cache_memory_growth:.2f}"
        )
    if args.out:
        result.write(args.out / "data_scale.json")


if __name__ == "__main__":
    main()
