"""The decoded cache on disk (pipeline.data.decoded, data.decoded: disk) against the in-memory path: the same
pixels and batches, rebuilt whenever what it was decoded from changes, never left half-written, shared
by torchrun ranks."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.data import decoded, splits
from pipeline.data.class_folder import prepare
from pipeline.data.images import BadImage
from pipeline.data.manifest import read_manifest
from pipeline.data.splits import chosen_mode, load_split
from pipeline.finetune.batches import AugmentedImages, ImageBatches
from pipeline.finetune.phase import make_augment
from pipeline.paths import DECODED_DIR
from tests.conftest import ROOT, data_config, stage_env, stage_project, tiny_params, write_class_images
from tests.test_train_processes import RUN, TWO_GLOO, max_difference, train

MAX_PIXELS = 10**7


def manifest(project: Path) -> list[dict]:
    return read_manifest(project / "prepared" / "manifest.csv")


def cache_folders(project: Path) -> list[Path]:
    """Complete cache folders (not the hidden lock files and partial builds)."""
    root = project / DECODED_DIR
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def all_batches(split, epochs=(1, 2)) -> list:
    """Every augmented batch of two seeded epochs, as training draws them."""
    dataset = AugmentedImages(split.images, split.labels, make_augment(tiny_params()), seed=3)
    batches = ImageBatches(dataset, 5, 0, torch.device("cpu"))
    order = torch.Generator().manual_seed(0)
    return [batch for epoch in epochs for batch in batches(torch.randperm(len(split.labels), generator=order), epoch)]


def test_cache_batches_are_bit_identical_to_memory_and_later_runs_map_it(prepared_folder, capsys):
    rows = manifest(prepared_folder)
    in_memory = load_split(rows, "train", 32, MAX_PIXELS, "memory")
    assert not cache_folders(prepared_folder)  # the memory path writes nothing
    on_disk = load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert "decoding" in capsys.readouterr().out
    [folder] = cache_folders(prepared_folder)
    assert (folder / "rows.csv").read_text().count("\n") == len(in_memory.paths) + 1  # the rows it came from
    assert on_disk.paths == in_memory.paths and torch.equal(on_disk.labels, in_memory.labels)
    assert torch.equal(on_disk.images, in_memory.images)
    for (x_disk, y_disk), (x_memory, y_memory) in zip(all_batches(on_disk), all_batches(in_memory), strict=True):
        assert torch.equal(x_disk, x_memory) and torch.equal(y_disk, y_memory)

    built = (folder / "images.npy").stat().st_mtime_ns
    again = load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert capsys.readouterr().out == "" and (folder / "images.npy").stat().st_mtime_ns == built  # not rebuilt
    assert str(folder / "images.npy") in Path("/proc/self/maps").read_text()  # mapped, not read into memory
    assert torch.equal(again.images, in_memory.images)


def test_a_stale_cache_is_never_reused(prepared_folder, monkeypatch):
    rows = manifest(prepared_folder)
    load_split(rows, "train", 32, MAX_PIXELS, "disk")
    # another image size, another decoder: other folders, the same pixels as decoding in memory
    resized = load_split(rows, "train", 24, MAX_PIXELS, "disk")
    assert torch.equal(resized.images, load_split(rows, "train", 24, MAX_PIXELS, "memory").images)
    monkeypatch.setattr(decoded, "DECODER_SOURCE", b"pipeline/data/images.py, edited")
    load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert len(cache_folders(prepared_folder)) == 3

    # the same file names with new contents: prepare records new hashes, and the cache follows
    write_class_images(prepared_folder / "images", per_class=8, classes=("green", "blue", "red"))
    prepare(data_config(prepared_folder / "images"), seed=0, out_dir=prepared_folder / "prepared")
    changed = manifest(prepared_folder)
    assert [r["path"] for r in changed] == [r["path"] for r in rows] and changed != rows
    fresh = load_split(changed, "train", 32, MAX_PIXELS, "disk")
    assert torch.equal(fresh.images, load_split(changed, "train", 32, MAX_PIXELS, "memory").images)
    assert len(cache_folders(prepared_folder)) == 4


def test_a_build_failing_on_a_real_broken_image_leaves_nothing_and_the_next_run_builds(prepared_folder):
    rows = manifest(prepared_folder)
    broken = Path([row for row in rows if row["split"] == "train"][-1]["path"])
    original = broken.read_bytes()
    broken.write_bytes(original[: len(original) // 2])  # truncated after prepare checked it
    with pytest.raises(BadImage):
        load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert not cache_folders(prepared_folder) and not list((prepared_folder / DECODED_DIR).glob("*.partial"))
    broken.write_bytes(original)
    rebuilt = load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert torch.equal(rebuilt.images, load_split(rows, "train", 32, MAX_PIXELS, "memory").images)


STALLED_BUILD = textwrap.dedent(
    """
    import sys, threading
    from pipeline.data import decoded
    from pipeline.data.manifest import read_manifest

    resize, done = decoded.resize_square, []
    def stall_after_two(image, size):  # the third image never ends: the build waits, mid-way, to be killed
        if len(done) == 2:
            print("mid-way", flush=True)
            threading.Event().wait()
        done.append(resize(image, size))
        return done[-1]
    decoded.resize_square = stall_after_two
    from pipeline.data.splits import load_split
    load_split(read_manifest(sys.argv[1]), "train", 32, 10**7, "disk")
    """
)


def test_a_build_killed_mid_way_leaves_nothing_half_written(prepared_folder):
    rows = manifest(prepared_folder)
    builder = subprocess.Popen(
        [sys.executable, "-c", STALLED_BUILD, "prepared/manifest.csv"],
        cwd=prepared_folder,
        env=stage_env(PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    # two images decoded, the third stalled: read up to that line, which involves no timing
    assert "mid-way\n" in iter(builder.stdout.readline, ""), "the build ended before it stalled"
    builder.send_signal(signal.SIGKILL)
    assert builder.wait() == -signal.SIGKILL
    partial = prepared_folder / DECODED_DIR
    assert list(partial.glob(".*.partial")) and not cache_folders(prepared_folder)  # killed mid-way: only the partial
    rebuilt = load_split(rows, "train", 32, MAX_PIXELS, "disk")
    assert torch.equal(rebuilt.images, load_split(rows, "train", 32, MAX_PIXELS, "memory").images)
    assert not list(partial.glob(".*.partial"))


def test_auto_keeps_small_data_in_memory_and_counts_every_local_process(monkeypatch):
    assert chosen_mode("auto", 1000, 96) == "memory" and chosen_mode("disk", 1000, 96) == "disk"
    decoded_bytes = 1000 * 3 * 96 * 96
    monkeypatch.setattr(splits.psutil, "virtual_memory", lambda: SimpleNamespace(available=8 * decoded_bytes))
    assert chosen_mode("auto", 1000, 96) == "memory"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four copies on this machine under torchrun
    assert chosen_mode("auto", 1000, 96) == "disk"
    assert chosen_mode("memory", 1000, 96) == "memory"


@pytest.mark.slow
def test_two_gloo_ranks_share_one_build_and_the_next_training_reuses_it(tmp_path):
    """What torchrun trains is checked against one process once, in tests/test_train_processes.py; here, only who
    decodes: one rank builds the cache, the other waits and maps it, and the next run decodes nothing."""
    project = stage_project(tmp_path, **RUN, **{"data.decoded": "disk"})
    first = train(project, TWO_GLOO)
    assert first["stdout"].count("decoding 18 train images") == 1  # one rank built it, the other waited and mapped it
    assert len(cache_folders(project)) == 2  # train and val
    again = train(project, TWO_GLOO)
    assert "decoding" not in again["stdout"]  # built once, reused
    assert max_difference(first["weights"], again["weights"]) == 0  # the same images, in the same order
