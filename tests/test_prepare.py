import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from pipeline.config import ConfigError
from pipeline.data.builtin_sets import ANIMAL_SHAPE_CLASSES, animal_shape, load_numpy_pickle
from pipeline.data.class_folder import prepare
from pipeline.data.images import BadImage, load_rgb
from tests.conftest import ROOT, data_config, stage_env


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


def exif_jpeg(first_tag: int = 0x010F) -> bytes:
    """A camera JPEG, rotated by its EXIF orientation, whose first EXIF entry is text under tag `first_tag`:
    Make (0x010F) as a camera writes it, or ImageWidth (0x0100), a number, as a broken writer leaves it. Pillow
    reads both, and fails to write the second back (exif_transpose re-writes the block without the orientation)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010F] = "camera"  # Make, the IFD's first entry (the entries are sorted by tag)
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    make = b"\x01\x0f\x00\x02"  # tag 0x010F, type 2 (ASCII), big-endian
    assert buffer.getvalue().count(make) == 1
    return buffer.getvalue().replace(make, first_tag.to_bytes(2, "big") + b"\x00\x02")


def test_a_file_with_malformed_exif_is_a_skipped_file_not_a_crash(image_folder, tmp_path):
    assert load_rgb(io.BytesIO(exif_jpeg()), 10**6).size == (12, 20)  # the well-formed one: turned upright
    (image_folder / "red" / "camera.jpg").write_bytes(exif_jpeg(first_tag=0x0100))
    with pytest.raises(BadImage, match="struct.error"):
        load_rgb(image_folder / "red" / "camera.jpg", 10**6)
    metrics = prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")
    [skipped] = json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]
    assert os.path.basename(skipped["path"]) == "camera.jpg" and skipped["reason"].startswith("struct.error: ")
    assert metrics["skipped"] == 1 and metrics["images"] == 3 * 6


def exif_fuzz_seeds(rng: np.random.Generator) -> list[tuple[bytes, int]]:
    """A small image of each format that carries EXIF (rotated, with text and rational tags), and where its EXIF
    block starts."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0131] = 6, "camera", "editor"
    exif[0x011A] = TiffImagePlugin.IFDRational(72, 1)
    seeds = []
    for image_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buffer, image_format, exif=exif)
        data = buffer.getvalue()
        seeds.append((data, max(data.find(b"MM\x00*"), data.find(b"II*\x00"), 0)))
    return seeds


def test_exif_fuzz_raises_nothing_but_bad_image():
    """4,000 seeded mutations inside the EXIF blocks of JPEG, PNG, WebP and TIFF files: each decodes or is a
    BadImage. Before, 14 of them escaped load_rgb as struct.error (prepare crashed, the service answered 500)."""
    rng = np.random.default_rng(28)
    seeds = exif_fuzz_seeds(rng)
    outcomes = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns of each corrupt EXIF block it reads past
        for trial in range(4000):
            seed, start = seeds[trial % len(seeds)]
            data = bytearray(seed)
            for _ in range(1 + trial % 4):
                data[rng.integers(start, min(start + 90, len(data)))] = rng.integers(0, 256)
            try:
                load_rgb(io.BytesIO(bytes(data)), 10**6)
                outcomes["decoded"] += 1
            except BadImage:
                outcomes["refused"] += 1
    assert outcomes["decoded"] > 1000 and outcomes["refused"] > 1000, outcomes


def phone_jpeg() -> bytes:
    """A JPEG carrying a second picture in its MPF segment, as phones write depth maps: Pillow reads it as MPO."""
    first, second = Image.new("RGB", (32, 24), (200, 10, 10)), Image.new("RGB", (8, 8), (10, 10, 200))
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    return buffer.getvalue()


def test_a_jpeg_with_a_second_picture_reads_as_its_first(image_folder, tmp_path):
    data = phone_jpeg()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = load_rgb(io.BytesIO(data), 10**6, formats=("JPEG", "PNG"))  # the service's list names JPEG only
    assert image.size == (32, 24) and np.abs(np.asarray(image, int)[12, 16] - (200, 10, 10)).max() <= 8
    with pytest.raises(BadImage, match="MPO is not one of the accepted formats: PNG"):
        load_rgb(io.BytesIO(data), 10**6, formats=("PNG",))
    (image_folder / "red" / "phone.jpg").write_bytes(data)
    metrics = prepare(data_config(image_folder), seed=1, out_dir=tmp_path / "out")
    assert metrics["skipped"] == 0 and "phone.jpg" in (tmp_path / "out" / "manifest.csv").read_text()


def test_a_file_as_data_source_is_named_as_a_file(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"data.source: .*params.yaml is a file; it should be a folder"):
        prepare(data_config(tmp_path / "params.yaml"), seed=1, out_dir=tmp_path / "out")


@pytest.mark.parametrize("system_folder", ["/", "/etc", "/proc", "/proc/self", "/usr"])
def test_a_system_folder_as_data_source_is_refused_before_it_is_read(system_folder, tmp_path):
    with pytest.raises(ConfigError, match=rf"data.source: {system_folder} is a system folder"):
        prepare(data_config(Path(system_folder)), seed=1, out_dir=tmp_path / "out")


def without_privileges(*command: str) -> list[str]:
    """`command` as the owner of its files without root's privileges (a user namespace that maps no user), so
    that permission bits hold even when the tests run as root."""
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace: {probe.stderr.decode()[-200:]}")
    return ["unshare", "-U", *command]


def prepare_in_subprocess(source: Path, out: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; from pathlib import Path; from pipeline.data.class_folder import prepare; "
        "from tests.conftest import data_config; "
        "print(prepare(data_config(Path(sys.argv[1])), seed=1, out_dir=Path(sys.argv[2])))"
    )
    command = without_privileges(sys.executable, "-c", code, str(source), str(out))
    return subprocess.run(command, cwd=ROOT, env=stage_env(), capture_output=True, text=True, check=False)


def test_an_unreadable_data_source_or_class_folder_is_refused_in_words(image_folder, tmp_path):
    (image_folder / "red" / "more").mkdir()
    try:
        image_folder.chmod(0o300)  # searchable, not listable
        refused = prepare_in_subprocess(image_folder, tmp_path / "out")
        image_folder.chmod(0o755)
        (image_folder / "red" / "more").chmod(0o000)
        inner = prepare_in_subprocess(image_folder, tmp_path / "out")
        (image_folder / "red" / "more").chmod(0o755)
        (image_folder / "red" / "0.png").chmod(0o000)
        kept = prepare_in_subprocess(image_folder, tmp_path / "out")
    finally:
        for path in (image_folder, image_folder / "red" / "more", image_folder / "red" / "0.png"):
            path.chmod(0o755)
    assert refused.returncode == 1 and "Traceback" in refused.stderr  # a ConfigError, with its message last:
    assert refused.stderr.strip().endswith(f"data.source: folder {image_folder} cannot be read (permission denied)")
    assert inner.stderr.strip().endswith(f"data.source: cannot read {image_folder / 'red' / 'more'}: Permission denied")
    assert kept.returncode == 0, kept.stderr  # an unreadable file is one skipped file
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == [
        {"path": str(image_folder / "red" / "0.png"), "reason": "cannot be read: Permission denied"}
    ]
