"""Soak and memory test of the served model under hostile traffic, on a real `bentoml serve` on loopback.

    python -m benchmarks.soak                                  # 64 clients, 30% bad requests, 600 s
    python -m benchmarks.soak --clients 16 --seconds 60 --out soak.json

First the memory attack: files built to exhaust memory or CPU (a 200000 x 2 PNG, a 1000000 x 1 PNG, a
16-bit 6324 x 6324 PNG, the pixel limit's worth of RGBA, and issue 28's TIFF tile, repeated JPEG scans and
inflating PNG profiles) are sent 8 at a time while the resident memory of the server and its workers is
sampled; its peak above idle is the figure. Then the soak: every client sends one request after another,
30% of them bad (not an image, truncated, empty, over the pixel limit, a format not accepted, invalid
base64, the wrong form field, a TIFF tile over the decode box); good answers are checked against
ONNX Runtime run directly on the same file. Any 5xx, a good request refused, a bad one accepted or a
wrong label is counted as an error.
"""

import argparse
import asyncio
import io
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.load_test import expected_labels, sample_images
from benchmarks.report import write_result
from pipeline import paths
from tests.hostile_files import jpeg_with_repeated_scans, png_with_many_profiles, tiff_with_a_huge_tile
from tests.servers import resident_by_process, resident_bytes, serving_process

MiB = 2**20


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def attack_files() -> dict[str, bytes]:
    """Files whose decoding costs far more than their size; the last three pass every per-format check and are
    stopped by the decode box alone (issue 28 rows 1, 2, 5, at the sizes of `python -m tests.hostile_files`)."""
    side = 6324  # 40 million pixels: the default serving.max_image_pixels
    return {
        "200000x2.png": png(np.zeros((2, 200_000), dtype=np.uint8)),
        "1000000x1.png": png(np.zeros((1, 1_000_000), dtype=np.uint8)),
        "16-bit 6324x6324.png": png(np.tile((np.arange(side) * 10).astype(np.uint16), (side, 1))),
        "RGBA 6324x6324.png": png(np.zeros((side, side, 4), dtype=np.uint8)),
        "huge_tile.tif": tiff_with_a_huge_tile(32768),
        "repeated_scans.jpg": jpeg_with_repeated_scans(6320, 1_000),
        "many_profiles.png": png_with_many_profiles(9013),
    }


def bad_requests(good: bytes) -> list[tuple[str, str, dict]]:
    """(kind, endpoint, httpx arguments) of requests the service must refuse with a 4xx."""
    return [
        ("not an image", "classify", {"files": {"image": ("a.png", b"hello, not a picture")}}),
        ("truncated", "classify", {"files": {"image": ("a.png", good[: len(good) // 2])}}),
        ("empty", "classify", {"files": {"image": ("a.png", b"")}}),
        ("over the pixel limit", "classify", {"files": {"image": ("a.png", png(np.zeros((7000, 7000), np.uint8)))}}),
        ("EPS", "classify", {"files": {"image": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")}}),
        ("invalid base64", "classify_base64", {"json": {"images": ["%%%"]}}),
        ("wrong field", "classify", {"files": {"file": ("a.png", good)}}),
        # a TIFF declared 16x16 whose tile needs 1 GB: the box refuses it in well under a second
        ("tile over the decode box", "classify", {"files": {"image": ("a.tif", tiff_with_a_huge_tile(32768))}}),
    ]


def sample_memory(process, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(resident_bytes(process))
        time.sleep(0.05)


def memory_attack(url: str, process, rounds: int) -> dict:
    files = attack_files()
    idle = resident_bytes(process)
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(process, stop, samples))
    sampler.start()
    statuses: dict[str, list[int]] = {name: [] for name in files}

    async def send_all() -> None:
        async with httpx.AsyncClient(timeout=300) as http:
            for _ in range(rounds):
                for name, blob in files.items():  # 8 of the same file at once
                    answers = await asyncio.gather(
                        *(http.post(f"{url}/v1/classify", files={"image": (name, blob)}) for _ in range(8))
                    )
                    statuses[name] += [a.status_code for a in answers]

    try:
        asyncio.run(send_all())
    finally:
        stop.set()
        sampler.join()
    return {
        "idle_mib": idle / MiB,
        "peak_mib": max(samples) / MiB,
        "peak_above_idle_mib": (max(samples) - idle) / MiB,
        "statuses": {name: sorted(set(codes)) for name, codes in statuses.items()},
        "requests": sum(len(codes) for codes in statuses.values()),
    }


async def soak_client(url, http, good, labels, bad, deadline, rng, tally) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        if rng.random() < 0.3:
            kind, endpoint, arguments = bad[rng.integers(len(bad))]
            try:
                answer = await http.post(f"{url}/v1/{endpoint}", **arguments)
            except httpx.HTTPError as exc:
                tally["errors"].append(f"{kind}: {type(exc).__name__}")
                continue
            tally["bad"] += 1
            tally["5xx"] += answer.status_code >= 500
            if not 400 <= answer.status_code < 500:
                tally["errors"].append(f"{kind}: {answer.status_code} {answer.text[:120]}")
            continue
        i = int(rng.integers(len(good)))
        try:
            answer = await http.post(f"{url}/v1/classify", files={"image": (f"{i}.png", good[i])})
        except httpx.HTTPError as exc:
            tally["errors"].append(f"good: {type(exc).__name__}")
            continue
        tally["good"] += 1
        tally["latencies"].append(time.perf_counter() - started)
        tally["5xx"] += answer.status_code >= 500
        if answer.status_code >= 500:
            tally["errors"].append(f"good: {answer.status_code} {answer.text[:120]}")
        elif answer.status_code != 200:
            tally["errors"].append(f"good refused: {answer.status_code} {answer.text[:120]}")
        elif answer.json()["predictions"][0]["label"] != labels[i]:
            tally["errors"].append(f"good: wrong label for image {i}")


async def sample_timeline(process, every: float, deadline: float, timeline: list[dict]) -> None:
    started = time.monotonic()
    while time.monotonic() < deadline:
        by_process = {name: rss / MiB for name, rss in (await asyncio.to_thread(resident_by_process, process)).items()}
        timeline.append({"t_s": round(time.monotonic() - started), "total_mib": sum(by_process.values())} | by_process)
        await asyncio.sleep(every)


def soak(url: str, process, clients: int, seconds: float, onnx_file: Path) -> dict:
    good = sample_images(64)
    labels = expected_labels(onnx_file, good)
    bad = bad_requests(good[0])
    tally = {"good": 0, "bad": 0, "5xx": 0, "errors": [], "latencies": []}
    timeline: list[dict] = []
    start_mib = resident_bytes(process) / MiB

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            deadline = time.monotonic() + seconds
            await asyncio.gather(
                sample_timeline(process, min(30.0, seconds / 10), deadline, timeline),
                *(
                    soak_client(url, http, good, labels, bad, deadline, np.random.default_rng(k), tally)
                    for k in range(clients)
                ),
            )

    asyncio.run(run())
    return {
        "clients": clients,
        "seconds": round(seconds),
        "good_requests": tally["good"],
        "bad_requests": tally["bad"],
        "errors": len(tally["errors"]),
        "server_errors_5xx": tally["5xx"],
        "wrong_labels": sum("wrong label" in e for e in tally["errors"]),
        "p50_ms": 1000 * float(np.percentile(tally["latencies"], 50)),
        "p99_ms": 1000 * float(np.percentile(tally["latencies"], 99)),
        "memory_start_mib": start_mib,
        "memory_end_mib": resident_bytes(process) / MiB,
        "first_errors": tally["errors"][:10],
        "memory_timeline": timeline,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(paths.ONNX_FILE), help="SERVING_MODEL: an .onnx file")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--attack-rounds", type=int, default=3, help="of 8 concurrent copies of each attack file")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here (read by docs/results.py)")
    args = parser.parse_args(argv)
    with serving_process({"SERVING_MODEL": args.model}) as (url, process):
        print(f"memory attack: {args.attack_rounds} rounds of 8 concurrent copies of each file ...", flush=True)
        memory = memory_attack(url, process, args.attack_rounds)
        print(f"soak: {args.clients} clients, 30% bad requests, {args.seconds:.0f} s ...", flush=True)
        figures = soak(url, process, args.clients, args.seconds, Path(args.model))
    result = {"model": args.model, "memory_attack": memory, "soak": figures}
    print(json.dumps(result, indent=2))
    if args.out:
        write_result(args.out, result, argv)
    failed = figures["errors"] or any(code >= 500 for codes in memory["statuses"].values() for code in codes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
