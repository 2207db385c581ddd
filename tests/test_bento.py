"""serving/bentofile.yaml: its pins are the project's, and `bentoml build` packs the service and only it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BENTOFILE = yaml.safe_load((ROOT / "serving/bentofile.yaml").read_text())


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_bento_packages_are_pinned_to_the_project_lock():
    locked = locked_versions()
    packages = dict(line.split("==", 1) for line in BENTOFILE["python"]["packages"])
    assert BENTOFILE["python"]["lock_packages"] is False  # locking needs the internet
    assert {name: locked.get(name) for name in packages} == packages
    assert {"onnxruntime-gpu", "bentoml", "fastapi", "python-multipart", "mlflow"} <= set(packages)
    assert not {"torch", "torchvision"} & set(packages)


def test_the_service_imports_neither_torch_nor_torchvision():
    code = "import sys, serving.service; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_bentoml_build_packs_the_service_offline_without_data_or_runs(tmp_path):
    checkout = tmp_path / "checkout"  # a copy of the project holding what a user's checkout holds
    for name in ("serving", "pipeline", "tests"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", checkout)
    (checkout / "mlruns/1/abc").mkdir(parents=True)
    (checkout / "mlruns/1/abc/params.yaml").write_text("{}\n")  # named like an included file
    (checkout / "models").mkdir()
    (checkout / "models/model.onnx").write_bytes(b"not packed")
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "bentoml")}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    result = subprocess.run(
        [bentoml, "build", "-f", "serving/bentofile.yaml", "."],
        check=False,
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (manifest,) = (tmp_path / "bentoml/bentos/image-classifier").glob("*/bento.yaml")
    bento = manifest.parent
    packed = sorted(str(path.relative_to(bento / "src")) for path in (bento / "src").rglob("*") if path.is_file())
    assert {"serving/service.py", "pipeline/data/images.py", "params.yaml"} <= set(packed)
    assert all(
        path.startswith(("serving/", "pipeline/")) or path in ("params.yaml", "bentofile.yaml") for path in packed
    ), packed
    assert yaml.safe_load(manifest.read_text())["services"][0]["name"] == "ImageClassifier"
    assert "onnxruntime-gpu==1.31.1" in (bento / "env/python/requirements.txt").read_text()
    assert "nvidia/cuda:12.8" in (bento / "env/docker/Dockerfile").read_text()
