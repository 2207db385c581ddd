import csv
import gzip
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError
from pipeline.data.builtin_sets import ANIMAL_SHAPE_CLASSES, animal_shape, load_numpy_pickle
from pipeline.data.class_folder import prepare
from pipeline.data.images import load_rgb
from tests.conftest import data_config


def read_rows(out_dir):
    with open(out_dir / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def add_awkward_files(folder):
    """One of each file a real folder of images turns up with, in class `red`."""
    red = folder / "red"
    Image.new("L", (16, 16), 128).save(red / "gray.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(red / "cmyk.jpg")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(red / "transparent.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(red / "sixteen_bit.png")
    (red / "empty.jpg").write_bytes(b"")
    (red / "notes.txt").write_text("not an image")
    (red / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, format="JPEG")
    (red / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])


def test_bad_files_are_skipped_and_reported_good_ones_kept(image_folder, tmp_path):
    add_awkward_files(image_folder)
    out = tmp_path / "prepared"
    metrics = prepare(data_config(image_folder), seed=1, out_dir=out)
    report = json.loads((out / "report.json").read_text())
    skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"empty.jpg", "notes.txt", "corrupt.png", "truncated.jpg"}
    assert skipped["empty.jpg"] == "empty file"
    kept = {os.path.basename(r["path"]) for r in read_rows(out) if r["label"] == "red"}
    assert {"gray.png", "cmyk.jpg", "transparent.png", "sixteen_bit.png"} <= kept
    assert metrics["skipped"] == 4 and metrics["images"] == 3 * 6 + 4


def test_odd_modes_become_rgb(image_folder):
    add_awkward_files(image_folder)
    red = image_folder / "red"
    for name in ("gray.png", "cmyk.jpg", "transparent.png", "sixteen_bit.png"):
        assert load_rgb(red / name, 10**6).mode == "RGB"
    assert load_rgb(red / "sixteen_bit.png", 10**6).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert load_rgb(red / "transparent.png", 10**6).getpixel((0, 0)) == (255, 255, 255)  # on white
    assert load_rgb(red / "gray.png", 10**6).getpixel((0, 0)) == (128, 128, 128)


def test_pixel_limit_skips_decompression_bombs(image_folder, tmp_path):
    Image.new("RGB", (300, 300)).save(image_folder / "red" / "huge.png")
    prepare(data_config(image_folder, max_image_pixels=300 * 299), seed=1, out_dir=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [os.path.basename(s["path"]) for s in report["skipped"]] == ["huge.png"]
    assert "over the limit" in report["skipped"][0]["reason"]


def test_split_is_stratified_seeded_and_hashed(image_folder, tmp_path):
    data = data_config(image_folder, val_fraction=0.2, test_fraction=0.2)
    prepare(data, seed=3, out_dir=tmp_path / "a")
    prepare(data, seed=3, out_dir=tmp_path / "b")
    prepare(data, seed=4, out_dir=tmp_path / "c")
    rows = read_rows(tmp_path / "a")
    assert rows == read_rows(tmp_path / "b")
    assert rows != read_rows(tmp_path / "c")
    for label in ("red", "green", "blue"):
        splits = [r["split"] for r in rows if r["label"] == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (4, 1, 1)
    first = rows[0]
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()


def test_per_class_cap_is_seeded(image_folder, tmp_path):
    metrics = prepare(data_config(image_folder, max_per_class=4), seed=1, out_dir=tmp_path / "a")
    assert metrics["images"] == 12
    prepare(data_config(image_folder, max_per_class=4), seed=1, out_dir=tmp_path / "b")
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(data_config(tmp_path / "nowhere"), seed=1, out_dir=tmp_path / "out")


def test_one_class_is_a_clear_error(image_folder, tmp_path):
    for name in ("green", "blue"):
        for f in (image_folder / name).iterdir():
            f.unlink()
        (image_folder / name).rmdir()
    with pytest.raises(ConfigError, match="at least 2 class sub-folders, found 1"):
        prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")


def test_class_without_readable_images_is_named(image_folder, tmp_path):
    (image_folder / "empty_class").mkdir()
    (image_folder / "empty_class" / "broken.jpg").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="empty_class has no readable images"):
        prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_restricted_unpickler_refuses_code(tmp_path):
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(os.system, f)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        load_numpy_pickle(evil)


def test_animal_shape_reads_offline():
    samples = list(animal_shape())
    assert len(samples) == 10_000
    assert {label for label, _ in samples} == set(ANIMAL_SHAPE_CLASSES)
    assert samples[0][1].shape == (28, 28) and samples[0][1].dtype == np.uint8
