"""LitData shards (pipeline.data.shards, data.decoded: shards) against the in-memory path: the same pixels and
batches, rewritten whenever what they were decoded from changes, never readable half-written, and read
by torchrun ranks on 2 "nodes" (2 processes on this machine, a local folder standing in for the object
store) that train the weights of one in-memory process."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.config import set_param
from pipeline.data import decoded
from pipeline.data.shards import CACHE_DIR, LOCAL_AS_REMOTE
from pipeline.data.splits import load_split
from tests.conftest import ROOT, stage_env, stage_project
from tests.test_decoded import MAX_PIXELS, all_batches, manifest
from tests.test_train_processes import ONE_THREAD, RUN, SINGLE, max_difference, outputs


def shard_folders(store: Path) -> list[Path]:
    """Complete shard folders (not the hidden lock files and partial writes)."""
    return sorted(p for p in store.iterdir() if not p.name.startswith(".")) if store.is_dir() else []


def test_shard_batches_are_bit_identical_to_memory_and_later_runs_read_them(prepared_folder, capsys):
    rows, store = manifest(prepared_folder), prepared_folder / "store"
    in_memory = load_split(rows, "train", 32, MAX_PIXELS, "memory")
    sharded = load_split(rows, "train", 32, MAX_PIXELS, "shards", f"{LOCAL_AS_REMOTE}{store}")
    assert "as shards" in capsys.readouterr().out
    [folder] = shard_folders(store)
    assert (folder / "index.json").is_file() and list(folder.glob("chunk-*.bin"))
    assert (folder / "rows.csv").read_text().count("\n") == len(in_memory.paths) + 1  # the rows they came from
    assert sharded.paths == in_memory.paths and torch.equal(sharded.labels, in_memory.labels)
    assert torch.equal(sharded.images[:], in_memory.images) and torch.equal(
        torch.stack(list(sharded.images)), in_memory.images
    )
    for (x_shards, y_shards), (x_memory, y_memory) in zip(all_batches(sharded), all_batches(in_memory), strict=True):
        assert torch.equal(x_shards, x_memory) and torch.equal(y_shards, y_memory)

    written = (folder / "index.json").stat().st_mtime_ns
    again = load_split(rows, "train", 32, MAX_PIXELS, "shards", str(store))  # a plain folder: read in place
    assert "as shards" not in capsys.readouterr().out and (folder / "index.json").stat().st_mtime_ns == written
    assert torch.equal(again.images[[4, 0, 2]], in_memory.images[[4, 0, 2]])


def test_stale_shards_are_never_read(prepared_folder, monkeypatch):
    rows, store = manifest(prepared_folder), prepared_folder / "store"
    load_split(rows, "train", 32, MAX_PIXELS, "shards", str(store))
    resized = load_split(rows, "train", 24, MAX_PIXELS, "shards", str(store))
    assert torch.equal(resized.images[:], load_split(rows, "train", 24, MAX_PIXELS, "memory").images)
    monkeypatch.setattr(decoded, "DECODER_SOURCE", b"pipeline/data/images.py, edited")
    load_split(rows, "train", 32, MAX_PIXELS, "shards", str(store))
    assert len(shard_folders(store)) == 3


STALLED_WRITE = textwrap.dedent(
    """
    import sys, threading
    from pipeline.data import shards
    from pipeline.data.manifest import read_manifest
    from pipeline.data.splits import load_split

    def stall(row_and_label, size, max_pixels):  # no image ends: the write waits, under way, to be killed
        print("decoding", flush=True)
        threading.Event().wait()
    shards.decoded_item = stall
    load_split(read_manifest(sys.argv[1]), "train", 32, 10**7, "shards", "store")
    """
)


def test_a_write_killed_mid_way_leaves_nothing_readable(prepared_folder):
    rows, store = manifest(prepared_folder), prepared_folder / "store"
    writer = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITE, "prepared/manifest.csv"],
        cwd=prepared_folder,
        env=stage_env(PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its LitData workers are killed with it
    )
    # LitData writes a chunk file only once the chunk is full (here: at the end), so the sign that the write
    # is under way is a worker decoding an image, which here never ends
    assert "decoding\n" in iter(writer.stdout.readline, ""), "the write ended before it stalled"
    assert writer.poll() is None, "the write ended before it could be killed"
    os.killpg(writer.pid, signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    assert list(store.glob(".*.partial")) and not shard_folders(store)  # killed mid-way: only the partial
    rewritten = load_split(rows, "train", 32, MAX_PIXELS, "shards", str(store))
    assert torch.equal(rewritten.images[:], load_split(rows, "train", 32, MAX_PIXELS, "memory").images)
    assert not list(store.glob(".*.partial"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunk_bytes(folder: Path) -> tuple[int, int]:
    """How many chunk files lie under `folder`, and their bytes."""
    sizes = [p.stat().st_size for p in folder.rglob("chunk-*.bin")]
    return len(sizes), sum(sizes)


@pytest.mark.slow
def test_two_nodes_read_the_shards_from_a_store_and_train_the_weights_of_one_in_memory_process(tmp_path):
    staged = stage_project(tmp_path, **RUN, **{"data.decoded": "memory"})
    # one thread, as each torchrun process: CPU kernels bit-reproducible (tests/test_train_processes.py)
    single = subprocess.run(SINGLE, cwd=staged, env=stage_env(**ONE_THREAD), capture_output=True, text=True)
    in_memory = outputs(staged, single)

    store = tmp_path / "object-store"
    set_param("data.decoded", "shards", staged / "params.yaml")
    set_param("data.shards", f"{LOCAL_AS_REMOTE}{store}", staged / "params.yaml")
    # written once before the job, in small chunks so that there are several to share out
    subprocess.run(
        [sys.executable, "-m", "pipeline.commands.shards", "--chunk-bytes", "8kb"],
        cwd=staged,
        env=stage_env(),
        check=True,
    )
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                "torchrun",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "pipeline.stages.train",
            ],
            cwd=staged,
            env=stage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    results = [node.communicate(timeout=300) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, results, strict=True):
        assert node.returncode == 0, f"{stdout[-2000:]}\n{stderr[-3000:]}"
    assert "on 2 processes" in results[0][0]
    sharded = outputs(staged, subprocess.CompletedProcess([], 0, results[0][0]))
    assert not any("writing" in stdout for stdout, _ in results)  # written once, before the job

    assert 0 < max_difference(in_memory["weights"], sharded["weights"]) < 1e-5  # as in tests/test_train_processes.py
    assert [r["val_accuracy"] for r in in_memory["history"]] == [r["val_accuracy"] for r in sharded["history"]]
    # Each rank read the images of its shares by their byte ranges, as from S3, R2 or GCS: no node copied
    # a chunk into its cache (LitData's own `local:` reader would have copied all 14 to each node).
    stored = [chunk_bytes(folder) for folder in shard_folders(store) if not folder.name.startswith("test-")]
    assert sum(chunks for chunks, _ in stored) > 2  # several chunks to share out
    for node in (0, 1):
        cache = staged / CACHE_DIR / f"node-{node}"
        assert cache.is_dir() and chunk_bytes(cache) == (0, 0)
