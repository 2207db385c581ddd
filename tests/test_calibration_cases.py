"""The verdict's calibration set: the built-in data families, the seeded transforms, the case list and its
resumable build (pipeline.choice.calibration_cases, `python -m pipeline.commands.calibrate --build`)."""

import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline.choice.calibration_cases import (
    Invert,
    Jitter,
    Scale,
    Texture,
    Tint,
    by_turns,
    check_data,
    read_cases,
    write_transformed,
)
from pipeline.choice.compare_report import CompareReport
from pipeline.config import ConfigError
from pipeline.data.builtin_sets import LOCATIONS, SHAPE_CANVAS, gray_patches, photo_patches, shape_location
from tests.conftest import ROOT, default_params, stage_env, write_class_images

GRID = {"head", "partial", "full", "lp-ft"}


def write_list(folder: Path, cases: str, common: str = "{}") -> Path:
    path = folder / "cases.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(f"common: {common}\ncases:\n{cases}")
    return path


def listed(folder: Path, cases: str, common: str = "{}"):
    return read_cases(write_list(folder, cases, common), ROOT / "params.yaml")


def test_the_committed_list_spans_families_and_runs_the_same_grid_everywhere():
    cases = read_cases(ROOT / "reports/calibration/cases.yaml", ROOT / "params.yaml")
    assert len(cases) >= 30
    families = {case.family for case in cases}
    assert len(families) >= 4 and {"photo-patches", "shape-location", "animal-shape", "digits"} <= families
    for case in cases:
        assert set(case.settings["compare.strategies"]) == GRID and case.settings["compare.seeds"] == [0, 1, 2]
        assert case.report == Path(f"reports/calibration/{case.name}/compare.json")
    transformed = [case for case in cases if case.transform is not None]
    assert transformed and all(case.data_source.parent == Path("data/calibration") for case in transformed)


def test_two_cases_of_the_same_comparison_are_refused_naming_both(tmp_path):
    size = default_params()["compare"]["image_size"]  # b sets params.yaml's own size: it is a, written otherwise
    twins = f"""\
  - {{name: a, family: digits, data: digits, settings: {{compare.epochs: 2}}}}
  - {{name: b, family: digits, data: digits, settings: {{compare.epochs: 2, compare.image_size: {size}}}}}
"""
    with pytest.raises(ConfigError, match="cases a and b are the same comparison"):
        listed(tmp_path, twins)
    other_size = twins.replace(f"image_size: {size}", f"image_size: {size + 32}")
    assert [case.name for case in listed(tmp_path, other_size)] == ["a", "b"]
    inverted = "  - {name: a, family: digits, data: digits}\n"
    inverted += "  - {name: b, family: digits, data: digits, transform: {kind: invert}}\n"
    assert [case.data_source.as_posix() for case in listed(tmp_path, inverted)] == [
        "data/builtin/digits",
        "data/calibration/digits-invert",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a, family: x, data: mnist}", "'mnist' is not a built-in dataset"),
        ("{name: a, family: x, data: digits, settings: {data.max_per_class: 5}}", "data.max_per_class: set by"),
        ("{name: a, family: x, data: digits, settings: {compare.method: halving}}", "compare.method: set by"),
        ("{name: a, family: x, data: digits, settings: {compare.epochs: 0}}", "case a's settings is invalid"),
        ("{name: a, family: x, data: digits, settings: {compare.epoch: 2}}", "compare.epoch: unknown key"),
        ("{name: A b, family: x, data: digits}", "name"),
        ("{name: a, family: x, data: digits, transform: {kind: blur}}", "does not match any of the expected tags"),
    ],
)
def test_a_bad_case_is_refused_naming_what_is_wrong(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        listed(tmp_path, f"  - {entry}\n")


def test_a_dataset_is_in_one_family_and_a_name_is_listed_once(tmp_path):
    with pytest.raises(ConfigError, match="a dataset in more than one family: digits"):
        listed(tmp_path, "  - {name: a, family: x, data: digits}\n  - {name: b, family: y, data: digits}\n")
    with pytest.raises(ConfigError, match="case names listed twice: a"):
        listed(tmp_path, "  - {name: a, family: x, data: digits}\n  - {name: a, family: x, data: photo-patches}\n")
    with pytest.raises(ConfigError, match="data.source: set by"):
        listed(tmp_path, "  - {name: a, family: x, data: digits}\n", common="{data.source: elsewhere}")


def test_common_settings_lie_under_each_cases_own(tmp_path):
    cases = listed(
        tmp_path,
        "  - {name: a, family: x, data: digits}\n"
        "  - {name: b, family: x, data: digits, settings: {compare.epochs: 2}}\n",
        common="{compare.epochs: 3, compare.seeds: [0, 1]}",
    )
    assert [case.settings for case in cases] == [
        {"compare.epochs": 3, "compare.seeds": [0, 1]},
        {"compare.epochs": 2, "compare.seeds": [0, 1]},
    ]


def test_the_build_takes_the_families_in_turn(tmp_path):
    entries = [("a1", "a", "digits"), ("a2", "a", "digits"), ("a3", "a", "digits"), ("b1", "b", "shape-location")]
    entries.append(("c1", "c", "photo-patches"))
    text = "".join(
        f"  - {{name: {name}, family: {family}, data: {data}, settings: {{compare.epochs: {index + 1}}}}}\n"
        for index, (name, family, data) in enumerate(entries)
    )
    assert [case.name for case in by_turns(listed(tmp_path, text))] == ["a1", "b1", "c1", "a2", "a3"]


def random_image(seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_seeded_transforms_give_the_same_pixels_for_the_same_seed_and_others_for_another():
    image = random_image()
    for transform in (Tint(kind="tint", seed=0), Jitter(kind="jitter", strength=0.5, seed=0)):
        first, again = (transform.apply(image, np.random.default_rng(1)) for _ in range(2))
        other = transform.apply(image, np.random.default_rng(2))
        assert first.shape == image.shape and first.dtype == np.uint8
        assert np.array_equal(first, again) and not np.array_equal(first, other)
    texture = Texture(kind="texture", opacity=0.5, seed=0)
    black = np.zeros((24, 24, 3), dtype=np.uint8)
    overlaid = texture.apply(black, np.random.default_rng(1))
    assert np.array_equal(overlaid, texture.apply(black, np.random.default_rng(1)))
    assert 0 < overlaid.max() <= 128  # half the texture over black: at most half as bright


def test_invert_tint_and_scale_do_what_they_say():
    image = random_image()
    assert np.array_equal(Invert(kind="invert").apply(image, np.random.default_rng(0)), 255 - image)
    gray = np.repeat(np.arange(0, 240, 10, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(24, axis=0)
    tinted = Tint(kind="tint", seed=0).apply(gray, np.random.default_rng(3)).astype(int)
    assert np.all(np.diff(tinted.sum(axis=2)[0]) >= 0)  # brighter stays brighter
    assert tinted[0, -1].max() - tinted[0, -1].min() > 100  # and the grey is a colour now
    square = np.zeros((40, 40, 3), dtype=np.uint8)
    square[10:30, 10:30] = 255
    scaled = Scale(kind="scale", factor=0.5).apply(square, np.random.default_rng(0))
    assert (scaled[..., 0] > 127).sum() == pytest.approx(400 * 0.25, rel=0.15)
    assert scaled[0, 0].tolist() == [0, 0, 0] and scaled[20, 20].tolist() == [255, 255, 255]


def test_a_transformed_copy_keeps_the_classes_and_files_and_is_written_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_class_images(tmp_path / "data/builtin/digits", per_class=4)
    (case,) = listed(tmp_path, "  - {name: a, family: x, data: digits, transform: {kind: invert}}\n")
    write_transformed(case)
    source = sorted(p.relative_to("data/builtin/digits") for p in Path("data/builtin/digits").glob("*/*.png"))
    copied = sorted(p.relative_to(case.data_source) for p in case.data_source.glob("*/*.png"))
    assert copied == source and len(copied) == 12
    original = np.asarray(Image.open(Path("data/builtin/digits") / source[0]).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(case.data_source / source[0])), 255 - original)
    (case.data_source / source[0]).unlink()
    write_transformed(case)  # there already: kept as it is
    assert not (case.data_source / source[0]).exists()


def test_a_case_without_its_built_in_data_names_the_command_that_writes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (case,) = listed(tmp_path, "  - {name: a, family: x, data: shape-location}\n")
    with pytest.raises(ConfigError, match=r"data/builtin/shape-location holds no images.*builtin@shape-location"):
        check_data(case)


def test_shape_location_s_class_is_the_grid_cell_its_shape_lies_in():
    images = list(islice(shape_location(), 3 * len(LOCATIONS)))
    assert [label for label, _ in images[: len(LOCATIONS)]] == list(LOCATIONS)
    cell = SHAPE_CANVAS // 3
    for label, pixels in images:
        assert pixels.shape == (SHAPE_CANVAS, SHAPE_CANVAS, 3)
        rows, columns = np.nonzero(np.any(pixels != pixels[0, 0], axis=2))  # the background is plain
        assert 0 < len(rows) < cell * cell
        assert LOCATIONS[3 * int(rows.mean() // cell) + int(columns.mean() // cell)] == label


def test_photo_patches_are_seeded_crops_one_class_per_photo():
    first, again = (list(islice(photo_patches(), 10)) for _ in range(2))
    assert len({label for label, _ in first}) == 10
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))
    assert all(pixels.shape == (96, 96, 3) and pixels.std() >= 8 for _, pixels in first)
    gray = list(islice(gray_patches(), 10))
    assert {label for label, _ in gray} >= {"brick", "grass", "gravel"} and gray[0][1].shape == (96, 96)


def run_build(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.commands.calibrate", "--build"],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_the_build_runs_each_missing_case_into_its_report_and_resumes_case_by_case(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    write_class_images(project / "data/builtin/digits", per_class=10)
    tiny = (
        "{compare.strategies: [head, full], compare.seeds: [0], compare.epochs: 1, compare.head_epochs: 1, "
        "compare.image_size: 32, compare.train_per_class: 5, train.batch_size: 8, train.device: cpu, "
        "model.weights: none}"
    )
    cases = "  - {name: plain, family: d, data: digits}\n  - {name: inverted, family: d, data: digits, " + (
        "transform: {kind: invert}}\n"
    )
    write_list(project / "reports/calibration", cases, tiny)

    first = run_build(project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 of 2 cases built; building 2" in first.stdout
    assert "[1/2] plain: built in" in first.stdout and "[2/2] inverted: built in" in first.stdout
    for name, source in (("plain", "data/builtin/digits"), ("inverted", "data/calibration/digits-invert")):
        folder = project / "reports/calibration" / name
        assert sorted(p.name for p in folder.iterdir()) == ["compare.json", "compare.md", "compare.png"]
        report = CompareReport.read(folder / "compare.json")
        assert (report.setup.data_source, report.setup.epochs, report.setup.train_images) == (source, 1, 15)
        assert set(report.summaries) == {"head", "full"} and report.setup.method == "grid"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    for data in ("digits", "digits-invert"):  # each case's comparison in its own data's experiment
        experiment = client.get_experiment_by_name(data).experiment_id
        assert len(client.search_runs(experiment, "tags.kind = 'compare'")) == 1

    kept = (project / "reports/calibration/plain/compare.json").read_bytes()
    shutil.rmtree(project / "reports/calibration/inverted")
    cases += "  - {name: located, family: s, data: shape-location}\n"  # its data is not written: it fails alone
    write_list(project / "reports/calibration", cases, tiny)
    second = run_build(project)
    assert second.returncode == 1 and "cases that failed: located" in second.stderr
    assert "1 of 3 cases built; building 2" in second.stdout  # the families in turn: d's plain, s's, d's inverted
    assert "[1/2] located: FAILED: case located: data/builtin/shape-location holds no images" in second.stdout
    assert "[2/2] inverted: built in" in second.stdout  # after the failure
    assert (project / "reports/calibration/plain/compare.json").read_bytes() == kept
    assert (project / "reports/calibration/inverted/compare.json").is_file()
    assert not (project / "reports/calibration/located").exists()
