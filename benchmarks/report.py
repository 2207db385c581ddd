"""What every benchmark result carries beside its figures: the machine, the software, the code and the command
that made it. The scripts under benchmarks/ build their result from a kind of benchmarks/figures.py and write it
(`Result.write`); docs/results.py reads it back through the same kind (`Kind.read`). Light on purpose (no torch
import): `make docs` reads results without the ML stack.
"""

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
RECORDED = "recorded by the run"


class Environment(BaseModel):
    """Where and how a result was measured. None: not recorded (listed in `not_recorded`), or absent (no GPU)."""

    model_config = ConfigDict(extra="forbid")

    date: str | None  # UTC
    command: str | None
    git_commit: str | None  # "+modified" when tracked files differed from it
    cpu_count: int | None
    cpu_arch: str | None
    cpu_model: str | None
    gpu: str | None
    gpu_memory_mib: int | None = None
    gpu_driver: str | None = None
    python: str | None
    torch: str | None
    onnxruntime: str | None
    not_recorded: list[str] = []
    source: str = RECORDED  # for results older than this record: where their environment was read from

    @model_validator(mode="after")
    def _not_recorded_fields_are_empty(self) -> "Environment":
        filled = [name for name in self.not_recorded if getattr(self, name, "unknown field") is not None]
        if filled:
            raise ValueError(f"not_recorded names fields that are set or do not exist: {filled}")
        return self

    @property
    def machine(self) -> str:
        """The hardware in a few words, as far as it was recorded."""
        cores = f"{self.cpu_count} cores" if self.cpu_count else None
        return ", ".join(part for part in (self.cpu_model or self.cpu_arch, cores, self.gpu) if part)

    @property
    def software(self) -> str:
        versions = (("torch", self.torch), ("ONNX Runtime", self.onnxruntime))
        return ", ".join(f"{name} {version}" for name, version in versions if version)


class Result(BaseModel):
    """A benchmark's JSON: its environment, and its figures as the script wrote them (`figures`). The kinds of
    benchmarks/figures.py type their figures; this untyped one reads any result."""

    model_config = ConfigDict(extra="allow")

    environment: Environment

    @property
    def figures(self) -> dict[str, Any]:
        return self.model_extra or {}

    @classmethod
    def read(cls, path: Path) -> Self:
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a benchmark result of its kind ({cls.__name__}): {error}") from None

    def write(self, path: Path) -> None:
        """To `path` in one rename, the environment first; a figure that is None (not measured) is left out."""
        figures = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"environment"})
        write_json(path, {"environment": self.environment.model_dump(mode="json")} | figures)


def write_result(path: Path, figures: dict[str, Any], argv: list[str] | None = None) -> None:
    """Untyped `figures` with the environment of this process, to `path` in one rename."""
    write_json(path, {"environment": capture(argv).model_dump(mode="json")} | figures)


def capture(argv: list[str] | None = None) -> Environment:
    """This process's environment; `argv` is the command's arguments when a caller passed them to its main."""
    gpu = gpu_query()
    return Environment(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command=command_line(sys.argv[1:] if argv is None else argv),
        git_commit=git_commit(),
        cpu_count=os.cpu_count(),
        cpu_arch=platform.machine() or None,
        cpu_model=cpu_model(),
        gpu=gpu[0] if gpu else None,
        gpu_memory_mib=int(gpu[1]) if gpu else None,
        gpu_driver=gpu[2] if gpu else None,
        python=platform.python_version(),
        torch=version("torch", "torch"),
        onnxruntime=version("onnxruntime", "onnxruntime-gpu", "onnxruntime"),
    )


def command_line(arguments: list[str]) -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    program = ["python", "-m", spec.name] if spec else ["python", sys.argv[0]]
    return shlex.join(program + arguments)


def output(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """None where the code is a copy without its git history (a lent machine's working tree)."""
    commit = output("git", "rev-parse", "HEAD")
    if commit is None:
        return None
    return commit + ("+modified" if output("git", "status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else platform.processor() or None


def gpu_query() -> list[str] | None:
    """Name, memory (MiB) and driver of the first GPU, from nvidia-smi; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "--query-gpu=name,memory.total,driver_version"
    answer = output("nvidia-smi", fields, "--format=csv,noheader,nounits")
    return [field.strip() for field in answer.splitlines()[0].split(",")] if answer else None


def version(module: str, *distributions: str) -> str | None:
    """The version of `module` as imported here, else of the first installed distribution providing it."""
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None
