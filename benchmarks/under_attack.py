"""A good request's wait under hostile uploads (issue 28's acceptance), on a real `bentoml serve` on loopback:
8 clients send, one after another, the three files that pass every per-format check and are stopped by the
decode box alone (a 1 MB TIFF declared 16x16 whose one tile is 32768², a 6320² progressive JPEG with its AC
scan repeated 10,000 times, a 9.5 MB PNG of 9,013 inflating iCCP chunks), while one client sends a good image
at a time and times each answer, and the resident memory of the server's processes is sampled. Once with the
box's one lane (`serving.decode_quick_seconds: null`, as before) and once with two (the default), side by side.

    python -m benchmarks.under_attack                 # 2 x 60 s, plus two server start-ups
    python -m benchmarks.under_attack --seconds 120 --out benchmarks/results/cpu-under-attack/under_attack.json
"""

import argparse
import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.figures import UnderAttackArgs, UnderAttackMode, UnderAttackResult
from benchmarks.load_test import sample_images
from benchmarks.report import capture
from benchmarks.soak import MiB, sample_memory
from pipeline import paths
from tests.hostile_files import jpeg_with_repeated_scans, png_with_many_profiles, tiff_with_a_huge_tile
from tests.servers import resident_bytes, serving_process

MODES = {"one lane": {"SERVING_DECODE_QUICK_SECONDS": "null"}, "two lanes": {}}
GOOD_WAIT_GOAL_S = 2


def hostile_uploads() -> list[tuple[str, bytes]]:
    return [
        ("huge_tile.tif", tiff_with_a_huge_tile(32768)),
        ("repeated_scans.jpg", jpeg_with_repeated_scans(6320, 10_000)),
        ("many_profiles.png", png_with_many_profiles(9013)),
    ]


async def send_until(http, url: str, upload: tuple[str, bytes], deadline: float, statuses: Counter) -> None:
    while time.monotonic() < deadline:
        try:
            statuses[str((await http.post(f"{url}/v1/classify", files={"image": upload})).status_code)] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1


async def time_good(http, url: str, good: list[bytes], deadline: float, waits: list[float], errors: list[str]) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        answer = await http.post(f"{url}/v1/classify", files={"image": ("good.png", good[len(waits) % len(good)])})
        waits.append(time.perf_counter() - started)
        if answer.status_code != 200:
            errors.append(f"{answer.status_code} {answer.text[:120]}")


def attack(url: str, hostile: list[tuple[str, bytes]], clients: int, seconds: float) -> tuple:
    """Good requests' waits and errors, and the hostile requests' statuses, over `seconds`."""
    good, waits, errors, statuses = sample_images(16), [], [], Counter()

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
        async with httpx.AsyncClient(limits=limits, timeout=300) as http:
            deadline = time.monotonic() + seconds
            senders = [send_until(http, url, hostile[i % len(hostile)], deadline, statuses) for i in range(clients)]
            await asyncio.gather(time_good(http, url, good, deadline, waits, errors), *senders)

    asyncio.run(run())
    return waits, errors, statuses


def measure(mode: str, model: str, hostile: list[tuple[str, bytes]], clients: int, seconds: float) -> UnderAttackMode:
    with serving_process({"SERVING_MODEL": model} | MODES[mode]) as (url, process):
        httpx.post(f"{url}/v1/classify", files={"image": ("good.png", sample_images(1)[0])}, timeout=60)
        idle, samples, stop = resident_bytes(process), [], threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(process, stop, samples))
        sampler.start()
        try:
            waits, errors, statuses = attack(url, hostile, clients, seconds)
        finally:
            stop.set()
            sampler.join()
    return UnderAttackMode(
        mode=mode,
        good_requests=len(waits),
        good_p50_ms=1000 * float(np.percentile(waits, 50)),
        good_p99_ms=1000 * float(np.percentile(waits, 99)),
        good_max_ms=1000 * max(waits),
        good_over_goal=sum(wait >= GOOD_WAIT_GOAL_S for wait in waits),
        good_errors=len(errors),
        hostile_statuses=dict(statuses),
        idle_mib=idle / MiB,
        peak_above_idle_mib=(max(samples) - idle) / MiB,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(paths.ONNX_FILE), help="SERVING_MODEL: an .onnx file")
    parser.add_argument("--clients", type=int, default=8, help="hostile clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="of attack, per mode")
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args()
    hostile = hostile_uploads()
    modes = [measure(mode, args.model, hostile, args.clients, args.seconds) for mode in MODES]
    for row in modes:
        print(
            f"{row.mode}: {row.good_requests} good requests, p50 {row.good_p50_ms:,.0f} ms, p99 {row.good_p99_ms:,.0f}"
            f" ms, max {row.good_max_ms:,.0f} ms, {row.good_over_goal} over {GOOD_WAIT_GOAL_S} s, {row.good_errors} "
            f"errors; hostile {row.hostile_statuses}; memory +{row.peak_above_idle_mib:,.0f} MiB above idle"
        )
    if args.out:
        settings = UnderAttackArgs(hostile_clients=args.clients, seconds=args.seconds, goal_s=GOOD_WAIT_GOAL_S)
        UnderAttackResult(environment=capture(), args=settings, modes=modes).write(args.out)


if __name__ == "__main__":
    main()
