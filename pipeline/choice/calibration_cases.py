"""The verdict's calibration set: the explicit list of cases in reports/calibration/cases.yaml, and the build that
runs each listed case's comparison (`python -m pipeline.commands.calibrate --build`).

A case is one grid comparison (pipeline.commands.compare) on a built-in dataset, perhaps moved toward or away
from natural images by a seeded transform, at the case's `settings` (params.yaml keys: images per class, budget,
image size, backbone, weights). Its family is where its data comes from: the validation leaves a whole family
out, so a transformed copy belongs to its source's family and a dataset to one family only.
"""

import copy
import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from PIL import Image, ImageEnhance
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.atomic import atomic_dir
from pipeline.config import PARAMS_FILE, ConfigError, parse_params, read_yaml, with_overrides, write_yaml
from pipeline.data.builtin_sets import BUILTIN, SKIMAGE_GRAY, photo_file, skimage_folder
from pipeline.paths import BUILTIN_DIR, CALIBRATION_CASES, CALIBRATION_DATA
from pipeline.tracking import store

REPORT_FILES = ("compare.json", "compare.md", "compare.png")
TEXTURES = SKIMAGE_GRAY[:3]  # brick, grass, gravel: what the texture overlay lays over an image


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Invert(Strict):
    """Every pixel v becomes 255 - v: dark shapes on light ground, or a photo's negative."""

    kind: Literal["invert"]

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return 255 - pixels


class Tint(Strict):
    """The image's luminance coloured by one seeded random hue per image: grey shapes in colour."""

    kind: Literal["tint"]
    seed: int = Field(ge=0)

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        luminance = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)[..., None] / 255
        hue = Image.new("HSV", (1, 1), (int(rng.integers(256)), 255, 255)).convert("RGB").getpixel((0, 0))
        return (luminance * np.asarray(hue, dtype=np.float32)).round().astype(np.uint8)


class Jitter(Strict):
    """Seeded colour jitter per image: brightness, contrast and saturation each by a factor in 1 +/- strength,
    the hue rotated by up to strength x half the colour wheel."""

    kind: Literal["jitter"]
    strength: float = Field(gt=0, le=1)
    seed: int = Field(ge=0)

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = Image.fromarray(pixels)
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(1 + rng.uniform(-self.strength, self.strength))
        hsv = np.asarray(image.convert("HSV")).copy()
        shift = int(rng.uniform(-self.strength, self.strength) * 128)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


class Texture(Strict):
    """A seeded crop of a natural texture (brick, grass, gravel) blended over the image at `opacity`."""

    kind: Literal["texture"]
    opacity: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _, texture = textures()[int(rng.integers(len(TEXTURES)))]
        height, width = pixels.shape[:2]
        side = int(rng.integers(min(texture.shape) // 4, min(texture.shape) // 2))
        top, left = (int(rng.integers(0, extent - side + 1)) for extent in texture.shape)
        crop = Image.fromarray(texture[top : top + side, left : left + side]).resize((width, height), Image.BICUBIC)
        layer = np.asarray(crop.convert("RGB"), dtype=np.float32)
        return ((1 - self.opacity) * pixels + self.opacity * layer).round().astype(np.uint8)


class Scale(Strict):
    """The image shrunk by `factor` about its centre, on its border's median colour: a smaller subject."""

    kind: Literal["scale"]
    factor: float = Field(gt=0.1, lt=1)

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = pixels.shape[:2]
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in np.median(border, axis=0)))
        small = Image.fromarray(pixels).resize((round(width * self.factor), round(height * self.factor)), Image.BICUBIC)
        canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
        return np.asarray(canvas)


Transform = Annotated[Invert | Tint | Jitter | Texture | Scale, Field(discriminator="kind")]


@functools.cache
def textures() -> list[tuple[str, np.ndarray]]:
    return [photo_file(skimage_folder(), name, "L") for name in TEXTURES]


def transform_label(transform: Transform) -> str:
    """The transform in a folder name: its kind, then each setting, e.g. texture-opacity0.5-seed0."""
    settings = transform.model_dump(exclude={"kind"})
    return "-".join([transform.kind, *(f"{key}{value}" for key, value in settings.items())])


Settings = dict[str, str | int | float | bool | list[str | int] | None]  # params.yaml's `section.key`s


def not_the_data(settings: Settings) -> Settings:
    """Refuses data.* and compare.method: prepare's split must be params.yaml's, so the verdict's scoring can
    remake it from the report alone, and a case is always a grid."""
    fixed = [key for key in settings if key.startswith("data.") or key == "compare.method"]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: set by the case (`data`, `transform`; always a grid), not here")
    return settings


class CalibrationCase(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")  # its report folder, reports/calibration/<name>
    family: str = Field(min_length=1)
    data: str  # a built-in dataset (pipeline.data.builtin_sets.BUILTIN), as the builtin stage writes it
    transform: Transform | None = None
    settings: Settings = {}

    @field_validator("data")
    @classmethod
    def _built_in(cls, data: str) -> str:
        if data not in BUILTIN:
            raise ValueError(f"{data!r} is not a built-in dataset: use one of {', '.join(BUILTIN)}")
        return data

    _not_the_data = field_validator("settings")(not_the_data)

    @property
    def report(self) -> Path:
        return CALIBRATION_CASES.parent / self.name / "compare.json"

    @property
    def data_source(self) -> Path:
        """The class folder the comparison runs on: the built-in set, or its transformed copy."""
        if self.transform is None:
            return BUILTIN_DIR / self.data
        return CALIBRATION_DATA / f"{self.data}-{transform_label(self.transform)}"

    def params(self, raw: dict) -> dict:
        """params.yaml's values (`raw`) with the case's settings, its data and a grid comparison."""
        overrides = self.settings | {"data.source": self.data_source.as_posix(), "compare.method": "grid"}
        return with_overrides(copy.deepcopy(raw), overrides)


class CaseList(Strict):
    common: Settings = {}  # every case's settings, under its own
    cases: list[CalibrationCase] = Field(min_length=1)

    _not_the_data = field_validator("common")(not_the_data)

    @field_validator("cases")
    @classmethod
    def _one_name_and_one_family_each(cls, cases: list[CalibrationCase]) -> list[CalibrationCase]:
        names = Counter(case.name for case in cases)
        if repeated := sorted(name for name, count in names.items() if count > 1):
            raise ValueError(f"case names listed twice: {', '.join(repeated)}")
        families: dict[str, set[str]] = {}
        for case in cases:  # leaving a family out must leave out every case on its data
            families.setdefault(case.data, set()).add(case.family)
        if split := sorted(data for data, names in families.items() if len(names) > 1):
            raise ValueError(f"a dataset in more than one family: {', '.join(split)}")
        return cases


def read_cases(cases_file: Path = CALIBRATION_CASES, params_file: Path = PARAMS_FILE) -> list[CalibrationCase]:
    """The listed cases, each one's params valid and no two the same comparison; errors name the case."""
    if not cases_file.is_file():
        raise ConfigError(f"{cases_file} not found: it lists the comparisons the verdict is calibrated on")
    try:
        listed = CaseList.model_validate(read_yaml(cases_file))
    except ValidationError as exc:
        raise ConfigError(f"{cases_file} is invalid:\n{exc}") from None
    cases = [case.model_copy(update={"settings": listed.common | case.settings}) for case in listed.cases]
    raw = read_yaml(params_file)
    seen: dict[str, str] = {}
    for case in cases:
        params = parse_params(case.params(raw), f"{cases_file}: case {case.name}'s settings")
        comparison = params.model_dump_json(exclude={"mlflow", "serving", "export", "verdict"})
        if comparison in seen:
            raise ConfigError(f"{cases_file}: cases {seen[comparison]} and {case.name} are the same comparison")
        seen[comparison] = case.name
    return cases


def write_transformed(case: CalibrationCase) -> None:
    """The case's seeded transformed copy of its built-in set, unless written already; all or nothing."""
    source, target = BUILTIN_DIR / case.data, case.data_source
    if case.transform is None or target.is_dir():
        return
    files = sorted(source.glob("*/*.png"))
    with atomic_dir(target) as partial:
        for index, path in enumerate(files):
            rng = np.random.default_rng([getattr(case.transform, "seed", 0), index])  # any order, same pixels
            with Image.open(path) as image:
                pixels = case.transform.apply(np.asarray(image.convert("RGB")), rng)
            (partial / path.parent.name).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(partial / path.parent.name / path.name)


def check_data(case: CalibrationCase) -> None:
    source = BUILTIN_DIR / case.data
    if not any(source.glob("*/*.png")):
        raise ConfigError(
            f"case {case.name}: {source} holds no images; write it first: "
            f"dvc repro builtin@{case.data} (or python -m pipeline.stages.builtin {case.data} {source})"
        )


def run_stage(module: str, folder: Path, *args: str) -> None:
    """`python -m module` in `folder`, a project copy, with this checkout's pipeline (not an installed one); its
    output goes to ours, so a long build shows each run as it ends."""
    env = os.environ | {"PYTHONPATH": str(Path.cwd().resolve()), "MLFLOW_TRACKING_URI": store.tracking_uri()}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=folder, env=env)
    if done.returncode != 0:
        raise ConfigError(f"{module} failed (exit status {done.returncode}): its output is above")


def build(case: CalibrationCase, raw: dict) -> None:
    """Run the case's grid comparison in a temporary copy of the project; its report lands in case.report's folder
    only once whole, so a killed build leaves no half report behind."""
    check_data(case)
    write_transformed(case)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        write_yaml(work / PARAMS_FILE.name, case.params(raw))
        for shared in (BUILTIN_DIR, CALIBRATION_DATA):
            (work / shared).parent.mkdir(parents=True, exist_ok=True)
            (work / shared).symlink_to(shared.resolve())
        run_stage("pipeline.stages.prepare", work)
        run_stage("pipeline.commands.compare", work, "--out", str(work / "report"))
        with atomic_dir(case.report.parent) as partial:
            for name in REPORT_FILES:
                shutil.copy2(work / "report" / name, partial / name)


def by_turns(cases: list[CalibrationCase]) -> list[CalibrationCase]:
    """The cases one family at a time in turn, each family's in their listed order: a build stopped half way has
    already measured every family."""
    families: dict[str, list[CalibrationCase]] = {}
    for case in cases:
        families.setdefault(case.family, []).append(case)
    turns = itertools.zip_longest(*families.values())
    return [case for turn in turns for case in turn if case is not None]


def build_missing(cases: list[CalibrationCase], params_file: Path = PARAMS_FILE) -> list[str]:
    """Build each case whose report is missing, the families in turn, timing each; the names of those that failed
    (the others are still built: one bad case must not cost the hours of the rest)."""
    raw = read_yaml(params_file)
    missing = [case for case in by_turns(cases) if not case.report.is_file()]
    print(f"{len(cases) - len(missing)} of {len(cases)} cases built; building {len(missing)}", flush=True)
    failed = []
    for number, case in enumerate(missing, 1):
        print(f"[{number}/{len(missing)}] {case.name}: running its comparison", flush=True)
        started = time.perf_counter()
        try:
            build(case, raw)
        except ConfigError as exc:
            failed.append(case.name)
            print(f"[{number}/{len(missing)}] {case.name}: FAILED: {exc}", flush=True)
            continue
        print(f"[{number}/{len(missing)}] {case.name}: built in {time.perf_counter() - started:.0f} s", flush=True)
    return failed
