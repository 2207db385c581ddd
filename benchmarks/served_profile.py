"""Where a served request's time goes: py-spy samples every process of a real `bentoml serve` under the load
test's clients, and each process's CPU seconds are read from the kernel (psutil), its native threads included.

    python -m benchmarks.served_profile --model models/model.onnx --out benchmarks/results/cpu-served-profile/x.json
    python -m benchmarks.served_profile --images-per-request 16 --clients 8

py-spy sees Python stacks only: ONNX Runtime's own pool threads are in a process's CPU seconds, not in its
samples. A sample is idle when its innermost frame waits (a selector, a condition, a pipe's poll).
Needs py-spy (`pip install py-spy`), which reads the server's memory: run it as the server's user.
"""

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks import load_test
from benchmarks.report import write_result
from pipeline import paths
from tests.servers import serving_process

IDLE = ("EpollSelector.select", "Condition.wait", "unix_poll", "Event.wait", "_wait_for_tstate_lock")
# A sample's part: that of the innermost frame any rule marks (an aiohttp write under FastAPI's route is the hop).
PARTS = [
    ("the model (ONNX Runtime)", ("onnxruntime/",)),
    ("decode + resize (Pillow)", ("PIL/", "pipeline/data/images.py")),
    ("decode box IPC (pebble, pipes)", ("pebble/", "multiprocessing/", "decode_box.py")),
    ("hop: the call to the model service", ("aiohttp/", "_bentoml_impl/client", "yarl/", "multidict/")),
    ("multipart parsing", ("formparsers.py", "python_multipart/", "read_uploads")),
    ("routing, JSON, metrics, tracing", ("fastapi/", "pydantic", "prometheus_client/", "opentelemetry/", "api_models")),
    ("HTTP (uvicorn, h11, middlewares)", ("h11/", "uvicorn/", "starlette/", "limits.py", "connections.py", "bentoml")),
]
# The model service exists for the hop: whatever it does besides the model is the hop's cost.
HOP_SERVICE = "ModelRunner"
HOP_SERVICE_PART = "hop: the model service (endpoint, IO models, serde, batching)"


def role_of(command: list[str], pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    if "--service-name" in command:
        return command[command.index("--service-name") + 1]
    return "decoder processes" if any("forkserver" in part or "pebble" in part for part in command) else "other"


def cpu_by_role(process: psutil.Process) -> dict[str, float]:
    """CPU seconds (user + system, all threads) of a server and its children, summed by role."""
    seconds: dict[str, float] = collections.Counter()
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            seconds[role_of(member.cmdline(), member.pid, process.pid)] += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return seconds


def part_of(frames: list[str], role: str) -> str:
    for frame in reversed(frames):
        found = next((name for name, marks in PARTS if any(mark in frame for mark in marks)), None)
        if found:
            return HOP_SERVICE_PART if role == HOP_SERVICE and not found.startswith("the model") else found
    return HOP_SERVICE_PART if role == HOP_SERVICE else "asyncio loop, other"


def samples_by_role(raw: Path, root: int) -> dict[str, dict[str, int]]:
    """py-spy's raw output (`process PID:"CMD";frame;...;frame COUNT`), non-idle samples by role and part."""
    found: dict[str, dict[str, int]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):
            continue
        innermost = max(i for i, frame in enumerate(frames) if frame.startswith("process "))
        pid, command = frames[innermost].removeprefix("process ").split(":", 1)
        role = role_of(command.split(), int(pid), root)
        found[role][part_of(frames[innermost + 1 :], role)] += int(count)
    return found


def profile(args, blobs, labels) -> dict:
    env = {"SERVING_MODEL": args.model} | ({"SERVING_WORKERS": str(args.workers)} if args.workers else {})
    with serving_process(env) as (url, process), tempfile.TemporaryDirectory() as folder:
        load_test.load(url, blobs, labels, args.shape, args, args.warmup)
        server = psutil.Process(process.pid)
        before, client_before = cpu_by_role(server), time.process_time()
        raw = Path(folder) / "spy.txt"
        spy = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(process.pid), "--subprocesses"]
        spy += ["--nonblocking", "--rate", "100", "--duration", str(round(args.seconds)), "--format", "raw"]
        recording = subprocess.Popen([*spy, "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        served = load_test.load(url, blobs, labels, args.shape, args, args.seconds)
        after, client_cpu = cpu_by_role(server), time.process_time() - client_before
        recording.wait(timeout=60)
        samples = samples_by_role(raw, process.pid)
    cpu = {role: after[role] - before.get(role, 0.0) for role in after} | {"load-test clients": client_cpu}
    return {"served": {k: v for k, v in served.items() if k != "errors"} | {"errors": len(served["errors"])},
            "cpu_seconds": cpu, "samples": {role: dict(parts) for role, parts in samples.items()}}  # fmt: skip


def print_table(result: dict) -> None:
    total = sum(result["cpu_seconds"].values())
    print(f"{'process':<20}{'CPU s':>7}{'share':>7}  parts of its non-idle py-spy samples")
    for role, seconds in sorted(result["cpu_seconds"].items(), key=lambda item: -item[1]):
        parts = result["samples"].get(role, {})
        count = sum(parts.values()) or 1
        shown = ", ".join(f"{name} {100 * n / count:.0f}%" for name, n in sorted(parts.items(), key=lambda i: -i[1]))
        print(f"{role:<20}{seconds:>7.1f}{100 * seconds / total:>6.0f}%  {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(paths.ONNX_FILE))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--workers", type=int, help="SERVING_WORKERS (default: the service's own)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.client_processes, args.max_requests = 1, 100_000
    args.shape = load_test.Load(args.clients, args.images_per_request)
    blobs = load_test.sample_images(64)
    labels = load_test.expected_labels(Path(args.model), blobs)
    result = profile(args, blobs, labels)
    print(f"{args.clients} clients, {args.images_per_request} image(s) a request: {result['served']}")
    print_table(result)
    if args.out:
        write_result(args.out, {"clients": args.clients, "images_per_request": args.images_per_request} | result, argv)
    return 1 if result["served"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
