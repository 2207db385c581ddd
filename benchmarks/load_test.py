"""Load test of the served model: concurrent clients against a real `bentoml serve` on loopback, single-image
requests and 16-image requests in one run, each set against the model alone at the batch the service formed.

    python -m benchmarks.load_test                          # 32 clients x 1 image, then 8 x 16; 60 s each
    python -m benchmarks.load_test --loads 64x1 --seconds 120 --model models:/animal-shape-classifier@champion
    python -m benchmarks.load_test --modes on,off           # adaptive batching on, then off
    python -m benchmarks.load_test --loads 256x1,64x16 --client-processes 8  # a GPU box

A load CxN is C clients, each posting N images a request (one: /v1/classify; more: /v1/classify_batch) and
checking each answer against ONNX Runtime run on the CPU on the same file, so a batching bug, or a GPU that
answers otherwise, shows up as errors rather than as speed. The service's mean batch (images a model call, from
its `model_batch_images` histogram) is then run through ONNX Runtime alone in this process: served images/s over
that is the share of the model's speed the service delivers. Both time (--seconds) and count (--max-requests per
client) are bounded; the server only ever listens on 127.0.0.1. The clients share the machine with the server:
on a 2-core box they take part of the CPU the server would otherwise have.
"""

import argparse
import asyncio
import csv
import io
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import write_photo_folder
from benchmarks.report import write_result
from pipeline import paths
from pipeline.config import load_serving_config
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
from serving.workers import front_workers
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


class Load(NamedTuple):
    clients: int
    images_per_request: int

    @classmethod
    def parse(cls, text: str) -> "Load":
        """`32x1`: 32 clients of one image a request."""
        clients, per_request = text.lower().split("x")
        return cls(int(clients), int(per_request))

    def __str__(self) -> str:
        return f"{self.clients}x{self.images_per_request}"


def load(url: str, blobs, labels, shape: Load, args, seconds: float) -> dict:
    """shape.clients clients spread over args.client_processes processes (one Python process's event
    loop tops out at about a thousand small requests a second, below what a GPU server answers)."""
    processes = min(args.client_processes, shape.clients)
    shares = [shape.clients // processes + (k < shape.clients % processes) for k in range(processes)]
    firsts = [sum(shares[:k]) for k in range(processes)]
    work = [
        (url, blobs, labels, shape.images_per_request, n, seconds, args.max_requests, f)
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
        "throughput": images / shape.images_per_request / elapsed,  # requests answered correctly, per second
        "images_per_s": images / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
    }


def batch_histogram(url: str) -> tuple[float, float]:
    """(images, calls) of the model so far, summed over the HTTP workers, from serving.batcher's histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return tuple(
        sum(float(value) for value in re.findall(rf"^model_batch_images_{series}(?:{{[^}}]*}})? (\S+)", text, re.M))
        for series in ("sum", "count")
    )


class ModelAlone:
    """ONNX Runtime's `session.run` on batches from host memory, on the providers the service runs: the model
    with no service around it."""

    def __init__(self, onnx_file: Path, blobs: list[bytes], providers: list[str]) -> None:
        self.session, card = open_session(onnx_file, providers)
        self.images = decode_files(blobs, card.image_size)

    def images_per_s(self, batch: int, seconds: float = 1.0) -> float:
        batch_images = self.images[np.arange(batch) % len(self.images)]
        for _ in range(3):  # warm-up
            self.session.run([OUTPUT], {INPUT: batch_images})
        calls, started = 0, time.perf_counter()
        while calls < 10 or time.perf_counter() - started < seconds:
            self.session.run([OUTPUT], {INPUT: batch_images})
            calls += 1
        return batch * calls / (time.perf_counter() - started)


def measured_round(url: str, blobs, labels, shape: Load, args, alone: ModelAlone) -> dict:
    """One round of a load, then the model alone at the mean batch the service formed in it."""
    images_before, calls_before = batch_histogram(url)
    result = load(url, blobs, labels, shape, args, args.seconds / args.rounds)
    images_after, calls_after = batch_histogram(url)
    calls = calls_after - calls_before
    result["batch"] = (images_after - images_before) / calls if calls else float(shape.images_per_request)
    result["model_batch"] = max(1, round(result["batch"]))
    result["model_images_per_s"] = alone.images_per_s(result["model_batch"])
    return result


def best_of(rounds: list[dict], alone: ModelAlone) -> dict:
    """The round the service served most images in (the machine is shared: noise only slows), with the model
    alone's best at that batch (in that round and twice more), and every round's errors."""
    best = max(rounds, key=lambda r: r["images_per_s"])
    alone = max(best["model_images_per_s"], *(alone.images_per_s(best["model_batch"]) for _ in range(2)))
    errors = [error for r in rounds for error in r["errors"]]
    share = best["images_per_s"] / alone
    return best | {"errors": errors, "model_images_per_s": alone, "served_over_model": share}


def run_mode(adaptive: bool, args, blobs, labels, onnx_file: Path) -> list[dict]:
    """Every load of args.loads against one server, batching on or off, in args.rounds interleaved rounds."""
    env = {"SERVING_MODEL": args.model, "SERVING_ADAPTIVE_BATCHING": str(adaptive).lower()}
    env |= {"SERVING_WORKERS": str(args.workers)} if args.workers else {}
    mode = "adaptive batching " + ("on" if adaptive else "off")
    rounds: dict[Load, list[dict]] = {shape: [] for shape in args.loads}
    with running_service(env) as url:
        providers = httpx.get(f"{url}/v1/metadata", timeout=10).json()["providers"]
        alone = ModelAlone(onnx_file, blobs, providers)
        for shape in args.loads:
            load(url, blobs, labels, shape, args, args.warmup)  # warm-up, not counted
        for number in range(args.rounds):
            for shape in args.loads:
                print(f"{mode}: {shape}, round {number + 1} of {args.rounds} ...", flush=True)
                rounds[shape].append(measured_round(url, blobs, labels, shape, args, alone))
        return [
            {"mode": mode, "load": str(shape), **shape._asdict(), **best_of(found, alone), "providers": providers}
            for shape, found in rounds.items()
        ]


def decode_ms(blobs: list[bytes], image_size: int) -> float:
    """Decoding and resizing one image on one core, the front's work per image (here, not in the box)."""
    started, decoded = time.perf_counter(), 0
    while decoded < len(blobs) or time.perf_counter() - started < 2:
        resize_square(load_rgb(io.BytesIO(blobs[decoded % len(blobs)]), 10**9), image_size)
        decoded += 1
    return 1000 * (time.perf_counter() - started) / decoded


def print_runs(args, runs: list[dict], parts: dict, workers: int) -> None:
    print(
        f"\n{args.model} on {', '.join(runs[0]['providers'])}, {workers} HTTP worker(s) "
        f"({'SERVING_WORKERS' if args.workers else 'derived from the machine'}), clients in "
        f"{args.client_processes} process(es), {args.seconds:.0f} s a load in {args.rounds} rounds (the best shown)"
    )
    print(
        f"{'mode':<24}{'load':>7}{'requests':>10}{'errors':>8}{'req/s':>9}{'images/s':>10}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'mean batch':>12}{'model alone':>13}{'served/model':>14}"
    )
    for r in runs:
        print(
            f"{r['mode']:<24}{r['load']:>7}{r['requests']:>10}{len(r['errors']):>8}{r['throughput']:>9.1f}"
            f"{r['images_per_s']:>10.1f}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['batch']:>12.1f}"
            f"{r['model_images_per_s']:>13,.0f}{r['served_over_model']:>14.2f}"
        )
    for load_name in {r["load"] for r in runs}:
        pair = [r for r in runs if r["load"] == load_name]
        if len(pair) == 2:
            on, off = pair
            print(f"{load_name} on/off: throughput x{on['throughput'] / off['throughput']:.2f}")
    print(
        f"decode + resize {parts['decode_ms_per_image']:.2f} ms an image on one core; model alone on "
        f"{parts['model_providers'][0]} at each load's mean batch, best of the rounds; "
        "served/model: served images/s over it"
    )
    for r in runs:
        for error in r["errors"][:5]:
            print(f"  {r['mode']} {r['load']} error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(paths.ONNX_FILE), help="SERVING_MODEL: an .onnx path or models:/NAME@ALIAS"
    )
    parser.add_argument(
        "--loads", default="32x1,8x16", help="CLIENTSxIMAGES a request, comma-separated: 32x1 is 32 clients of 1 image"
    )
    parser.add_argument("--client-processes", type=int, default=1, help="processes the clients are spread over")
    parser.add_argument("--workers", type=int, help="SERVING_WORKERS (default: serving.workers, null: derived)")
    parser.add_argument("--modes", default="on", help="adaptive batching on, off or both (on,off)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per load and mode, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a load's seconds are split into; the best counts")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client, load and mode")
    parser.add_argument("--images", type=int, default=64, help="distinct images the clients cycle through")
    parser.add_argument("--photos", type=int, metavar="PX", help="send synthetic JPEG photos of PX px instead")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here (read by docs/results.py)")
    args = parser.parse_args(argv)
    args.loads = [Load.parse(text) for text in args.loads.split(",")]

    if args.model.startswith("models:/"):
        from serving.model_source import resolve_model

        onnx_file = resolve_model(args.model)[0]
    else:
        onnx_file = Path(args.model)
    # what the server will run with: the same settings and derivation as serving/service.py
    environ = os.environ | ({"SERVING_WORKERS": str(args.workers)} if args.workers else {})
    workers = front_workers(load_serving_config(environ=environ))
    blobs = sample_images(args.images, args.photos)
    labels = expected_labels(onnx_file, blobs)
    agreement = agreement_with_cpu(onnx_file, blobs, labels)
    runs = [run for mode in args.modes.split(",") for run in run_mode(mode == "on", args, blobs, labels, onnx_file)]
    image_size = open_session(onnx_file, CPU)[1].image_size
    parts = {"decode_ms_per_image": decode_ms(blobs, image_size), "model_providers": runs[0]["providers"]}
    print_runs(args, runs, parts, workers)
    if args.out:
        figures = {
            "model": args.model,
            "providers": runs[0]["providers"],
            "client_processes": args.client_processes,
            "images": f"synthetic JPEG photos of {args.photos} px" if args.photos else "test split",
            "workers": workers,
            "workers_from": "SERVING_WORKERS" if args.workers else "serving.workers",
            "seconds": round(args.seconds),
            "rounds": args.rounds,
            "warmup_seconds": round(args.warmup),
            "gpu_cpu_top1_agreement": None if agreement is None else [agreement, len(blobs)],
            "where_the_time_goes": parts,
            "runs": [{k: v for k, v in r.items() if k != "providers"} | {"errors": len(r["errors"])} for r in runs],
        }
        write_result(args.out, figures, argv)
    failed = any(r["errors"] for r in runs) or (agreement is not None and agreement < len(blobs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
