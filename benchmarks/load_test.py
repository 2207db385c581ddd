"""Load test of the served model: concurrent clients against a real `bentoml serve` on loopback,
with adaptive batching on and then off, side by side in one run.

    python -m benchmarks.load_test                          # 32 clients x 60 s per mode, models/model.onnx
    python -m benchmarks.load_test --clients 64 --seconds 120 --model models:/animal-shape-classifier@champion

Each client posts one image at a time to /v1/classify and checks the answer against ONNX Runtime
run directly on the same file, so a batching bug shows up as errors rather than as speed. Both
time (--seconds) and count (--max-requests per client) are bounded; the server only ever listens
on 127.0.0.1. The clients share the machine with the server: on a 2-core box they take part of
the CPU the server would otherwise have, which holds for both modes alike.
"""

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pipeline import paths
from pipeline.onnx_model import classify_files
from tests.servers import running_service

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / paths.MANIFEST


def sample_images(count: int) -> list[bytes]:
    """Test-split files of the prepared data when there are some, else random PNGs."""
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


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_record(module: str, argv: list[str] | None, model: str) -> dict:
    """What every benchmark JSON starts with: where its figures come from (read by docs/results.py)."""
    return {
        "source": f"written by this run of `python -m {module}`",
        "command": f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": model,
    }


def expected_labels(onnx_file: Path, blobs: list[bytes]) -> list[str]:
    """The top-1 class ONNX Runtime gives each file."""
    probabilities, card = classify_files(onnx_file, blobs)
    return [card.classes[i] for i in probabilities.argmax(axis=1)]


async def client(
    url: str,
    blobs: list[bytes],
    labels: list[str],
    deadline: float,
    max_requests: int,
    offset: int,
    http: httpx.AsyncClient,
    latencies: list[float],
    errors: list[str],
) -> None:
    for n in range(max_requests):
        if time.monotonic() >= deadline:
            return
        i = (offset + n) % len(blobs)
        start = time.perf_counter()
        try:
            response = await http.post(f"{url}/v1/classify", files={"image": (f"{i}.png", blobs[i])})
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        finally:
            latencies.append(time.perf_counter() - start)
        if response.status_code != 200:
            errors.append(f"{response.status_code}: {response.text[:200]}")
        elif response.json()["predictions"][0]["label"] != labels[i]:
            errors.append(f"image {i}: got {response.json()['predictions'][0]['label']}, ONNX Runtime says {labels[i]}")


async def load(url: str, blobs, labels, clients: int, seconds: float, max_requests: int) -> dict:
    latencies, errors = [], []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *(
                client(url, blobs, labels, deadline, max_requests, k * 7, http, latencies, errors)
                for k in range(clients)
            )
        )
        elapsed = time.monotonic() - start
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput": (len(latencies) - len(errors)) / elapsed,  # answered correctly, per second
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
    env = {"SERVING_MODEL": args.model, "SERVING_ADAPTIVE_BATCHING": str(adaptive).lower()}
    with running_service(env) as url:
        asyncio.run(load(url, blobs, labels, args.clients, args.warmup, args.max_requests))  # warm-up, not counted
        images_before, calls_before = batch_histogram(url)
        result = asyncio.run(load(url, blobs, labels, args.clients, args.seconds, args.max_requests))
        images_after, calls_after = batch_histogram(url)
        calls = calls_after - calls_before
        result["batch"] = (images_after - images_before) / calls if adaptive and calls else 1.0
        result["providers"] = httpx.get(f"{url}/v1/metadata", timeout=10).json()["providers"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(paths.ONNX_FILE), help="SERVING_MODEL: an .onnx path or models:/NAME@ALIAS"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client and mode")
    parser.add_argument("--images", type=int, default=64, help="distinct images the clients cycle through")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here (read by docs/results.py)")
    args = parser.parse_args(argv)

    if args.model.startswith("models:/"):
        from serving.service import resolve_model

        onnx_file = resolve_model(args.model)[0]
    else:
        onnx_file = Path(args.model)
    blobs = sample_images(args.images)
    labels = expected_labels(onnx_file, blobs)
    results = {}
    for adaptive in (True, False):
        name = "adaptive batching on" if adaptive else "adaptive batching off"
        print(f"{name}: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
        results[name] = run_mode(adaptive, args, blobs, labels)

    print(
        f"\n{args.model} on {', '.join(next(iter(results.values()))['providers'])}, "
        f"{args.clients} concurrent clients, one image per request, {args.seconds:.0f} s per mode"
    )
    print(f"{'mode':<24}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}")
    for name, r in results.items():
        print(
            f"{name:<24}{r['requests']:>10}{len(r['errors']):>8}{r['throughput']:>9.1f}"
            f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['batch']:>12.1f}"
        )
    on, off = results.values()
    print(f"on/off: throughput x{on['throughput'] / off['throughput']:.2f}, p99 x{on['p99_ms'] / off['p99_ms']:.2f}")
    for name, r in results.items():
        for error in r["errors"][:5]:
            print(f"  {name} error: {error}")
    if args.out:
        figures = run_record("benchmarks.load_test", argv, args.model) | {
            "providers": next(iter(results.values()))["providers"],
            "clients": args.clients,
            "seconds": round(args.seconds),
            "warmup_seconds": round(args.warmup),
            "modes": {
                name: {k: v for k, v in r.items() if k != "providers"} | {"errors": len(r["errors"])}
                for name, r in results.items()
            },
        }
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
