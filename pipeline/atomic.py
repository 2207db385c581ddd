"""Writing outputs all-or-nothing, so DVC never takes a half-written file for a finished one, and checking
before a stage's work that its outputs can be written at all."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# The room a stage needs beyond what it replaces: its largest output at once is a model file of tens of MB.
MIN_FREE_BYTES = 64 * 2**20


class OutputNotWritable(OSError):
    """A stage's output folder is read-only, full or not a folder: found before the stage does its work."""


def writable_folder(folder: Path) -> None:
    """Raise OutputNotWritable unless a file can be created, written and removed in `folder` and its file
    system has MIN_FREE_BYTES free. A missing folder is not made (a stage that stops early leaves nothing
    behind): its nearest existing parent is probed, where the stage would make it."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        try:
            os.write(descriptor, b"x")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputNotWritable(f"cannot write in {folder}: {exc.strerror or exc}") from None
    if free < MIN_FREE_BYTES:
        raise OutputNotWritable(
            f"{folder} is on a file system with {free / 2**20:.1f} MB free, under the {MIN_FREE_BYTES // 2**20} MB "
            "a stage needs to write its outputs"
        )


def check_writable(*outputs: Path) -> None:
    """Each stage calls this first with its outputs: a read-only or full folder stops it in a second, naming the
    folder, instead of after minutes of work. atomic_path writes beside a file, atomic_dir beside a folder and
    then replaces the folder's content, so both the parent and an existing output folder must be writable."""
    for output in outputs:
        writable_folder(output.parent)
        if output.is_dir():
            writable_folder(output)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        # the error that stopped the block is the one to report: on a read-only file system even
        # unlinking a file that was never made fails, and that error replaced the real one
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(data, indent=2) + "\n")
