"""Real servers on free loopback ports for the tests (and the load test): `bentoml serve` of the service."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(port: int) -> list[str]:
    """What `make serve` runs, on `port`, by this interpreter (also where bentoml has no script on PATH)."""
    bentoml = [sys.executable, "-m", "bentoml"]
    return [*bentoml, "serve", "serving.service:ImageClassifier", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def running_service(env: dict[str, str], startup_timeout: float = 120):
    """`bentoml serve` on a free loopback port until the block ends; yields its base URL."""
    with serving_process(env, startup_timeout) as (url, _):
        yield url


def resident_by_process(process: subprocess.Popen) -> dict[str, int]:
    """Resident bytes of a server and of every process it started, named by role and pid: `supervisor`,
    then each BentoML worker by the `--service-name` it was started with."""
    root = psutil.Process(process.pid)
    found = {}
    for member in [root, *root.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):  # a worker that just exited
            command = member.cmdline()
            role = command[command.index("--service-name") + 1] if "--service-name" in command else "worker"
            found[f"{'supervisor' if member.pid == root.pid else role} {member.pid}"] = member.memory_info().rss
    return found


def resident_bytes(process: subprocess.Popen) -> int:
    """Resident memory of a server and every process it started (BentoML's workers)."""
    return sum(resident_by_process(process).values())


@contextmanager
def serving_process(env: dict[str, str], startup_timeout: float = 120):
    """`bentoml serve` on a free loopback port until the block ends; yields its base URL and process."""
    port = free_port()
    # The log goes to a file, not a pipe: a full pipe would stall a busy server. A BENTOML_HOME of its own: every
    # `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir as it starts, so servers sharing one (tests
    # running side by side) would wipe each other's /metrics.
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as home:
        process = subprocess.Popen(
            serve_command(port),
            cwd=ROOT,
            env=os.environ | {"BENTOML_HOME": home} | env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that stopping it stops its workers too
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bentoml serve was not ready after {startup_timeout:.0f} s")
                time.sleep(0.5)
            else:
                log.seek(0)
                output = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{output}")
            yield url, process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
