"""Load test of the served model: concurrent clients against a real `bentoml serve` on loopback,
with adaptive batching on and then off, side by side in one run.

    python -m benchmarks.load_test                          # 32 clients x 60 s per mode, models/model.onnx
    python -m benchmarks.load_test --clients 64 --seconds 120 --model models:/animal-shape-classifier@champion
    python -m benchmarks.load_test --clients 256 --client-processes 8 --workers 8 --images-per-request 8  # a GPU box

Each client posts one image at a time to /v1/classify (or several to /v1/classify_batch) and checks
each answer against ONNX Runtime run on the CPU on the same file, so a batching bug, or a GPU that
answers otherwise, shows up as errors rather than as speed. Then the served path's parts are timed
alone: decoding and resizing an image, and the model on a batch of the served mean size. Both
time (--seconds) and count (--max-requests per client) are bounded; the server only ever listens
on 127.0.0.1. The clients share the machine with the server: on a 2-core box they take part of
the CPU the server would otherwise have, which holds for both modes alike.
"""

import argparse
import asyncio
import csv
import io
import multiprocessing
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import write_photo_folder
from benchmarks.report import write_result
from pipeline import paths
from pipeline.data.images import load_rgb, resize_square
from pipeline.release.onnx_runtime import (
    INPUT,
    OUTPUT,
    PROVIDERS,
    classify_files,
    decode_files,
    open_session,
    probabilities,
)
from tests.servers import running_service

CPU = ["CPUExecutionProvider"]

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / paths.MANIFEST


def sample_images(count: int, photo_size: int | None = None) -> list[bytes]:
    """Test-split files of the prepared data when there are some, else random PNGs; with `photo_size`,
    synthetic JPEG photos of that size (to weigh decoding as camera uploads do)."""
    if photo_size:
        with tempfile.TemporaryDirectory() as folder:
            write_photo_folder(Path(folder), count, 1, photo_size)
            return [path.read_bytes() for path in sorted(Path(folder).glob("*/*.jpg"))]
    if MANIFEST.is_file():
        with MANIFEST.open() as handle:
            paths = [ROOT / row["path"] for row in csv.DictReader(handle) if row["split"] == "test"]
        if paths:
            return [path.read_bytes() for path in paths[:count]]
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


def expected_labels(onnx_file: Path, blobs: list[bytes], providers: list[str] = CPU) -> list[str]:
    """The top-1 class ONNX Runtime gives each file (on the CPU unless told: the reference answer)."""
    answer, card = classify_files(onnx_file, blobs, providers)
    return [card.classes[i] for i in answer.argmax(axis=1)]


def agreement_with_cpu(onnx_file: Path, blobs: list[bytes], labels: list[str]) -> int | None:
    """On a GPU machine, for how many images the GPU's top-1 class is the CPU's; None without one."""
    session, card = open_session(onnx_file, PROVIDERS)
    provider = session.get_providers()[0]
    if provider == "CPUExecutionProvider":
        return None
    on_gpu = [card.classes[i] for i in probabilities(session, decode_files(blobs, card.image_size)).argmax(axis=1)]
    agreement = sum(a == b for a, b in zip(on_gpu, labels, strict=True))
    print(f"top-1 class on {provider} = on the CPU for {agreement} of {len(blobs)} images", flush=True)
    return agreement


async def client(
    url: str,
    blobs: list[bytes],
    labels: list[str],
    per_request: int,
    deadline: float,
    max_requests: int,
    offset: int,
    http: httpx.AsyncClient,
    tally: dict,
) -> None:
    for n in range(max_requests):
        if time.monotonic() >= deadline:
            return
        first = (offset + n * per_request) % len(blobs)
        chosen = [(first + j) % len(blobs) for j in range(per_request)]
        start = time.perf_counter()
        try:
            if per_request == 1:
                response = await http.post(f"{url}/v1/classify", files={"image": (f"{first}.png", blobs[first])})
            else:
                files = [("images", (f"{i}.png", blobs[i])) for i in chosen]
                response = await http.post(f"{url}/v1/classify_batch", files=files)
        except httpx.HTTPError as exc:
            tally["errors"].append(f"{type(exc).__name__}: {exc}")
            continue
        finally:
            tally["latencies"].append(time.perf_counter() - start)
        if response.status_code != 200:
            tally["errors"].append(f"{response.status_code}: {response.text[:200]}")
            continue
        answers = response.json() if per_request > 1 else [response.json()]
        for i, answer in zip(chosen, answers, strict=True):
            got = answer["predictions"][0]["label"]
            if got == labels[i]:
                tally["images"] += 1
            else:
                tally["errors"].append(f"image {i}: got {got}, ONNX Runtime on the CPU says {labels[i]}")


async def load_in_one_process(url, blobs, labels, per_request, clients, seconds, max_requests, first_client) -> dict:
    tally = {"latencies": [], "errors": [], "images": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(
                client(url, blobs, labels, per_request, deadline, max_requests, k * 7, http, tally)
                for k in range(first_client, first_client + clients)
            )
        )
    return tally


def run_client_process(arguments: tuple) -> dict:
    return asyncio.run(load_in_one_process(*arguments))


def load(url: str, blobs, labels, args, seconds: float) -> dict:
    """args.clients clients spread over args.client_processes processes (one Python process's event
    loop tops out at about a thousand small requests a second, below what a GPU server answers)."""
    processes = args.client_processes
    shares = [args.clients // processes + (k < args.clients % processes) for k in range(processes)]
    firsts = [sum(shares[:k]) for k in range(processes)]
    work = [
        (url, blobs, labels, args.images_per_request, n, seconds, args.max_requests, f)
        for n, f in zip(shares, firsts, strict=True)
    ]
    start = time.monotonic()
    if processes == 1:
        tallies = [run_client_process(work[0])]
    else:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            tallies = list(pool.map(run_client_process, work))
    elapsed = time.monotonic() - start
    latencies = [t for tally in tallies for t in tally["latencies"]]
    errors = [e for tally in tallies for e in tally["errors"]]
    images = sum(tally["images"] for tally in tallies)
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput": images / args.images_per_request / elapsed,  # requests answered correctly, per second
        "images_per_s": images / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
    }


def batch_histogram(url: str) -> tuple[float, float]:
    """(images, calls) of the model's `predict` so far, from BentoML's Prometheus histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = []
    for series in ("sum", "count"):
        pattern = rf'^bentoml_service_adaptive_batch_size_{series}\{{[^}}]*method_name="predict"[^}}]*\}} (\S+)'
        match = re.search(pattern, text, re.MULTILINE)
        totals.append(float(match.group(1)) if match else 0.0)
    return totals[0], totals[1]


def run_mode(adaptive: bool, args, blobs, labels) -> dict:
    env = {
        "SERVING_MODEL": args.model,
        "SERVING_ADAPTIVE_BATCHING": str(adaptive).lower(),
        "SERVING_WORKERS": str(args.workers),
        "SERVING_MODEL_WORKERS": str(args.model_workers),
    }
    with running_service(env) as url:
        load(url, blobs, labels, args, args.warmup)  # warm-up, not counted
        images_before, calls_before = batch_histogram(url)
        result = load(url, blobs, labels, args, args.seconds)
        images_after, calls_after = batch_histogram(url)
        calls = calls_after - calls_before
        # BentoML counts the requests merged into one call; each request carries images_per_request images
        result["requests_per_call"] = (images_after - images_before) / calls if calls else 1.0
        result["batch"] = result["requests_per_call"] * args.images_per_request
        result["providers"] = httpx.get(f"{url}/v1/metadata", timeout=10).json()["providers"]
    return result


def where_the_time_goes(onnx_file: Path, blobs: list[bytes], providers: list[str], batch: int) -> dict:
    """The served path's two measurable parts, each alone in this process: decoding and resizing one
    image on one core (the front's work), and the model on a batch of the served mean size
    (the model service's work: one `session.run` from host memory)."""
    session, card = open_session(onnx_file, providers)
    started, decoded = time.perf_counter(), 0
    while decoded < len(blobs) or time.perf_counter() - started < 2:
        resize_square(load_rgb(io.BytesIO(blobs[decoded % len(blobs)]), 10**9), card.image_size)
        decoded += 1
    decode_s = (time.perf_counter() - started) / decoded
    images = decode_files(blobs, card.image_size)
    batch_images = images[np.arange(batch) % len(images)]
    calls = [session.run([OUTPUT], {INPUT: batch_images}) for _ in range(3)]  # warm-up
    started = time.perf_counter()
    while len(calls) < 23 or time.perf_counter() - started < 2:
        calls.append(session.run([OUTPUT], {INPUT: batch_images}))
    model_s = (time.perf_counter() - started) / (len(calls) - 3)
    return {
        "decode_ms_per_image": 1000 * decode_s,
        "decode_images_per_s_one_core": 1 / decode_s,
        "model_batch": batch,
        "model_images_per_s": batch / model_s,
        "model_providers": session.get_providers(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(paths.ONNX_FILE), help="SERVING_MODEL: an .onnx path or models:/NAME@ALIAS"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=1, help="processes the clients are spread over")
    parser.add_argument("--images-per-request", type=int, default=1, help="over 1: /v1/classify_batch")
    parser.add_argument("--workers", type=int, default=1, help="SERVING_WORKERS: the server's HTTP front processes")
    parser.add_argument("--model-workers", type=int, default=1, help="SERVING_MODEL_WORKERS: its model processes")
    parser.add_argument("--modes", default="on,off", help="adaptive batching on, off or both")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client and mode")
    parser.add_argument("--images", type=int, default=64, help="distinct images the clients cycle through")
    parser.add_argument("--photos", type=int, metavar="PX", help="send synthetic JPEG photos of PX px instead")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here (read by docs/results.py)")
    args = parser.parse_args(argv)

    if args.model.startswith("models:/"):
        from serving.model_source import resolve_model

        onnx_file = resolve_model(args.model)[0]
    else:
        onnx_file = Path(args.model)
    blobs = sample_images(args.images, args.photos)
    labels = expected_labels(onnx_file, blobs)
    agreement = agreement_with_cpu(onnx_file, blobs, labels)
    results = {}
    for adaptive in [mode == "on" for mode in args.modes.split(",")]:
        name = "adaptive batching on" if adaptive else "adaptive batching off"
        print(f"{name}: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
        results[name] = run_mode(adaptive, args, blobs, labels)
    served_providers = next(iter(results.values()))["providers"]
    fastest = max(results.values(), key=lambda r: r["images_per_s"])
    breakdown = where_the_time_goes(onnx_file, blobs, served_providers, max(1, round(fastest["batch"])))

    print(
        f"\n{args.model} on {', '.join(served_providers)}, {args.clients} concurrent clients in "
        f"{args.client_processes} process(es), {args.images_per_request} image(s) per request, "
        f"{args.workers} front worker(s), {args.model_workers} model worker(s), {args.seconds:.0f} s per mode"
    )
    print(
        f"{'mode':<24}{'requests':>10}{'errors':>8}{'req/s':>9}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'mean batch':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<24}{r['requests']:>10}{len(r['errors']):>8}{r['throughput']:>9.1f}{r['images_per_s']:>10.1f}"
            f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['batch']:>12.1f}"
        )
    if len(results) == 2:
        on, off = results.values()
        print(
            f"on/off: throughput x{on['throughput'] / off['throughput']:.2f}, p99 x{on['p99_ms'] / off['p99_ms']:.2f}"
        )
    print(
        f"where the time goes: decode + resize {breakdown['decode_ms_per_image']:.2f} ms an image "
        f"({breakdown['decode_images_per_s_one_core']:,.0f}/s on one core); the model alone "
        f"{breakdown['model_images_per_s']:,.0f} images/s at batch {breakdown['model_batch']} on "
        f"{breakdown['model_providers'][0]}; served {fastest['images_per_s']:,.0f} images/s "
        f"(x{breakdown['model_images_per_s'] / fastest['images_per_s']:.1f} below the model alone)"
    )
    for name, r in results.items():
        for error in r["errors"][:5]:
            print(f"  {name} error: {error}")
    if args.out:
        figures = {
            "model": args.model,
            "providers": served_providers,
            "clients": args.clients,
            "client_processes": args.client_processes,
            "images_per_request": args.images_per_request,
            "images": f"synthetic JPEG photos of {args.photos} px" if args.photos else "test split",
            "workers": args.workers,
            "model_workers": args.model_workers,
            "seconds": round(args.seconds),
            "warmup_seconds": round(args.warmup),
            "gpu_cpu_top1_agreement": None if agreement is None else [agreement, len(blobs)],
            "where_the_time_goes": breakdown,
            "modes": {
                name: {k: v for k, v in r.items() if k != "providers"} | {"errors": len(r["errors"])}
                for name, r in results.items()
            },
        }
        write_result(args.out, figures, argv)
    failed = any(r["errors"] for r in results.values()) or (agreement is not None and agreement < len(blobs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
