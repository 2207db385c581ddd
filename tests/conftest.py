import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import pipeline  # noqa: F401  (sets the telemetry opt-outs before any library loads)
from pipeline.config import DataConfig, parse_params, with_overrides
from pipeline.data.class_folder import prepare
from pipeline.model.card import ModelCard

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")


def default_params(**overrides) -> dict:
    """params.yaml as a dict, with `section.key` overrides."""
    return with_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)


def tiny_params(**overrides):
    """A run small enough for a test: few images, small inputs, one or two epochs."""
    settings = {
        "data.max_per_class": None,
        "train.image_size": 32,
        "train.epochs": 1,
        "finetune.head_epochs": 2,
        "train.batch_size": 8,
        "train.device": "cpu",
    }
    return parse_params(default_params(**(settings | overrides)))


def data_config(source: Path, **overrides) -> DataConfig:
    """params.yaml's `data` section for `source`, every image kept, with `key=value` overrides."""
    settings = {"data.source": str(source), "data.max_per_class": None}
    return parse_params(default_params(**settings | {f"data.{k}": v for k, v in overrides.items()})).data


def model_card(**overrides) -> ModelCard:
    """A card for test models: three classes, 32 px, a normalisation unlike any backbone's."""
    fields = {
        "classes": ["cat", "dog", "owl"],
        "image_size": 32,
        "mean": (0.4, 0.5, 0.6),
        "std": (0.2, 0.25, 0.3),
        "backbone": "resnet18",
        "weights": "none",
        "strategy": "full",
        "data_source": "images",
        "data_fingerprint": "0" * 64,
    }
    return ModelCard(**fields | overrides)


def write_class_images(folder: Path, per_class: int = 6, size: int = 20, classes=("red", "green", "blue")) -> Path:
    """Learnable synthetic classes: noisy images dominated by one colour channel each."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            pixels[..., index % 3] += 150
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_class_images(tmp_path / "images")


@pytest.fixture(scope="session")
def animal_shape_folder(tmp_path_factory) -> Path:
    """The first 60 images of each class of the built-in animal-shape data (as the builtin stage writes them)."""
    from pipeline.data.builtin_sets import animal_shape

    folder = tmp_path_factory.mktemp("builtin") / "animal-shape"
    written: dict[str, int] = {}
    for label, pixels in animal_shape():
        if written.get(label, 0) < 60:
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / label / f"{written.get(label, 0)}.png")
            written[label] = written.get(label, 0) + 1
    return folder


@pytest.fixture
def in_tmp_project(tmp_path, monkeypatch) -> Path:
    """A working directory laid out like the project (stages use relative paths)."""
    monkeypatch.chdir(tmp_path)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def prepared_folder(tmp_path, monkeypatch) -> Path:
    """Synthetic class images prepared into prepared/manifest.csv, as the working directory, whose
    data/decoded/ holds the decoded cache (tests/test_decoded.py, tests/test_shards.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    write_class_images(tmp_path / "images", per_class=8)
    prepare(data_config(tmp_path / "images"), seed=0, out_dir=tmp_path / "prepared")
    return tmp_path


def trained_run(project: Path, tracking_uri: str | None = None) -> str:
    """The id of the MLflow run that trained the project's models/model.pt, found as evaluate and export find it."""
    # imported here: subprocesses that measure their memory import this module, and MLflow costs hundreds of MB
    from mlflow import MlflowClient

    from pipeline.tracking.runs import trained_run_id

    client = MlflowClient(tracking_uri or f"sqlite:///{project / 'mlflow.db'}")
    return trained_run_id(client, project / "models" / "model.pt")


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: this venv's tools first, the local MLflow store unless given."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | extra


def stage_project(folder: Path, **overrides) -> Path:
    """A folder laid out like the project, with this checkout's pipeline/, a tiny params.yaml (plus
    `section.key` overrides) and synthetic class images, prepared: ready for `python -m pipeline.stages.train`."""
    shutil.copytree(ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")  # the train stage's params: what its checkpoint must match
    write_class_images(folder / "images", per_class=10)
    settings = {
        "data.source": "images",
        "data.max_per_class": None,
        "model.backbone": "resnet18",
        "model.weights": "none",
        "train.image_size": 32,
        "train.device": "cpu",
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(default_params(**(settings | overrides)), sort_keys=False))
    subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=folder, env=stage_env(), check=True)
    return folder


# What `dvc repro` of the project reads besides its data and code: the verdict's calibration.
PROJECT_FILES = (
    "dvc.yaml",
    ".gitignore",
    ".dvcignore",
    "reports/verdict/calibration.jsonl",
    "reports/verdict/label_check.jsonl",
)


def dvc_project(folder: Path, params: dict) -> Path:
    """A git and DVC repository laid out like the project (this checkout's pipeline/ and PROJECT_FILES) with
    `params` as its params.yaml, committed: ready for `dvc repro`."""
    shutil.copytree(ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PROJECT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, folder / name)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        subprocess.run(command, cwd=folder, env=stage_env(), check=True, capture_output=True)
    return folder


def with_strategy(params_text: str, strategy: str) -> str:
    """params.yaml's text with finetune.strategy set to `strategy`, its comment where it was (what
    `set_param` must write), whatever the committed default is."""
    return re.sub(
        r"(?m)^  strategy: \S+ *", lambda found: f"  strategy: {strategy}".ljust(len(found[0])), params_text, count=1
    )
