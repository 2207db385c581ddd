"""What the decode box (pipeline.data.decode_box) costs per image, and what it saves on hostile files: the same
files decoded in this process (as before) and in the box, side by side in one run.

    python -m benchmarks.decode_box                     # ~1 min on 2 cores
    python -m benchmarks.decode_box --out benchmarks/results/cpu-decode-box/decode_box.json

Good files: the default data's images (animal-shape PNGs, 96 px out) and 640x480 photos (noise and gradients as
JPEG, 224 px out): the CPU time per image, one at a time, of this process and its decoders (what the box adds to
each image), and the wall-clock throughput with every core busy; the ways interleaved over rounds, the best
round of each kept. Hostile files (issue 28's rows 1, 2 and
5, tests/hostile_files.py, at the tests' sizes): before, decoded in a fresh process (its CPU time and how far
its peak memory rose); after, through a box of --memory-mb and --seconds (how long to the refusal, and what).
"""

import argparse
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from benchmarks.figures import DecodeBoxArgs, DecodeBoxResult, DecodeCost, HostileDecode
from benchmarks.report import ROOT, capture
from pipeline.data.builtin_sets import animal_shape
from pipeline.data.decode_box import DecodeBox, DecodeLimits
from pipeline.data.images import BadImage, load_rgb, resize_square
from tests.hostile_files import jpeg_with_repeated_scans, png_with_many_profiles, tiff_with_a_huge_tile

MAX_PIXELS = 40_000_000  # the default serving.max_image_pixels
HOSTILE = {
    "TIFF, 16x16 declared, one 16384² tile": lambda: tiff_with_a_huge_tile(16384),
    "progressive JPEG 2048², AC scan x2000": lambda: jpeg_with_repeated_scans(2048, 2000),
    "PNG with 4000 iCCP chunks of 1 MB": lambda: png_with_many_profiles(4000),
}


def default_data(count: int) -> list[bytes]:
    """The first `count` images of the built-in animal-shape data, as PNG files (as its builtin stage writes)."""
    files = []
    for _, pixels in animal_shape():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
        if len(files) == count:
            return files
    return files


def photos(count: int) -> list[bytes]:
    """640x480 JPEGs of noise over gradients: the size of a phone photo scaled down, with real entropy."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:480, 0:640]
    files = []
    for _ in range(count):
        gradient = (rows * rng.uniform(0.1, 0.5) + columns * rng.uniform(0.1, 0.4))[..., None] * rng.uniform(0.3, 1, 3)
        pixels = np.clip(gradient + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def in_process(blob: bytes, size: int) -> np.ndarray:
    return resize_square(load_rgb(io.BytesIO(blob), MAX_PIXELS), size)


def cpu_seconds() -> float:
    """CPU time of this process and of every process it started (the box's decoders): on a shared machine
    a steadier cost than wall-clock time, which other work stretches."""
    children = psutil.Process().children(recursive=True)
    return time.process_time() + sum(sum(child.cpu_times()[:2]) for child in children)


def cost(name: str, files: list[bytes], size: int, rounds: int, workers: int) -> DecodeCost:
    """One set's figures; each way gets its own pool, the box's started (and warmed) before it is timed."""
    limits = DecodeLimits(memory_mb=512, seconds=10)
    with DecodeBox(limits, workers=1) as one, DecodeBox(limits, workers=workers) as many:
        for box in (one, many):
            [box.result(f) for f in [box.submit(files[0], MAX_PIXELS, None, size) for _ in range(workers)]]
        with ThreadPoolExecutor(workers) as threads:
            ways = {
                "in_process": lambda: [in_process(blob, size) for blob in files],
                "boxed": lambda: [one.result(one.submit(blob, MAX_PIXELS, None, size)) for blob in files],
                "in_process_parallel": lambda: list(threads.map(lambda blob: in_process(blob, size), files)),
                "boxed_parallel": lambda: [
                    many.result(f) for f in [many.submit(blob, MAX_PIXELS, None, size) for blob in files]
                ],
            }
            cpu, wall = dict.fromkeys(ways, float("inf")), dict.fromkeys(ways, float("inf"))
            for _ in range(rounds):  # interleaved: a slower moment of a shared machine hits every way alike
                for way, run in ways.items():
                    started_cpu, started = cpu_seconds(), time.perf_counter()
                    run()
                    wall[way] = min(wall[way], time.perf_counter() - started)
                    cpu[way] = min(cpu[way], cpu_seconds() - started_cpu)
    return DecodeCost(
        images=name,
        count=len(files),
        file_kb=sum(map(len, files)) / len(files) / 1024,
        size=size,
        in_process_ms=cpu["in_process"] / len(files) * 1000,
        boxed_ms=cpu["boxed"] / len(files) * 1000,
        in_process_per_s=len(files) / wall["in_process_parallel"],
        boxed_per_s=len(files) / wall["boxed_parallel"],
    )


BEFORE = """
import io, re, resource, sys, time
from pipeline.data.images import load_rgb, resize_square
def peak():
    return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
blob, before, started = sys.stdin.buffer.read(), peak(), time.process_time()
try:
    resize_square(load_rgb(io.BytesIO(blob), 40_000_000), 96)
    outcome = 'decoded'
except Exception as exc:
    outcome = f'{type(exc).__name__}: {exc}'
print(time.process_time() - started, (peak() - before) / 2**20, outcome)
"""


def hostile(name: str, blob: bytes, box: DecodeBox) -> HostileDecode:
    before = subprocess.run(
        [sys.executable, "-c", BEFORE], input=blob, capture_output=True, cwd=ROOT, check=True, env=os.environ
    )
    cpu_s, peak_mb, outcome = before.stdout.decode().split(maxsplit=2)
    started = time.perf_counter()
    try:
        box.result(box.submit(blob, MAX_PIXELS, None, 96))
        boxed = "decoded"
    except BadImage as exc:
        boxed = str(exc)
    return HostileDecode(
        name=name,
        file_kb=len(blob) / 1024,
        before_cpu_s=float(cpu_s),
        before_peak_mb=float(peak_mb),
        before=outcome.strip(),
        boxed_s=time.perf_counter() - started,
        boxed=boxed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images of the default data")
    parser.add_argument("--photos", type=int, default=60, help="640x480 photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-mb", type=int, default=128, help="the box's memory for the hostile files")
    parser.add_argument("--seconds", type=float, default=1, help="the box's seconds for the hostile files")
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    sets = [
        cost("default data (animal-shape PNG)", default_data(args.images), 96, args.rounds, workers),
        cost("640x480 photos (JPEG)", photos(args.photos), 224, args.rounds, workers),
    ]
    for row in sets:
        print(
            f"{row.images}: {row.in_process_ms:.2f} ms CPU in process, {row.boxed_ms:.2f} ms in the box "
            f"(+{row.added_ms:.2f} ms); {workers} at a time {row.in_process_per_s:.0f}/s against "
            f"{row.boxed_per_s:.0f}/s (x{row.throughput_ratio:.2f})"
        )
    with DecodeBox(DecodeLimits(args.memory_mb, args.seconds), workers=1) as box:
        attacks = [hostile(name, make(), box) for name, make in HOSTILE.items()]
    for row in attacks:
        print(
            f"{row.name} ({row.file_kb:,.0f} KB): before {row.before_cpu_s:.1f} s CPU, +{row.before_peak_mb:.0f} MB, "
            f"{row.before}; in the box {row.boxed_s:.2f} s, {row.boxed}"
        )
    settings = DecodeBoxArgs(workers=workers, rounds=args.rounds, memory_mb=args.memory_mb, seconds=args.seconds)
    if args.out:
        DecodeBoxResult(environment=capture(), args=settings, sets=sets, hostile=attacks).write(args.out)


if __name__ == "__main__":
    main()
