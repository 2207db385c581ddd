"""Issue 28 row 10: the export stage on a real sqlite registry never leaves a half-made version. Killed right
after it registers (tests/killed_export.py: a known point), or failing on a full disk after it registers, then
run again: one version, complete with its tags, and no run left RUNNING."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, stage_env, stage_project, trained_run

pytestmark = pytest.mark.slow  # a training and two exports per test, each a process of its own

NAME = "images-classifier"  # the registered model named after the data folder, `images`


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A project with a model trained by the train stage (timm's 370k-parameter test_resnet, one epoch)."""
    settings = {"model.backbone": "test_resnet", "train.epochs": 1, "finetune.head_epochs": 1}
    project = stage_project(tmp_path_factory.mktemp("trained") / "project", **settings)
    stage(project, "pipeline.stages.train")
    return project


@pytest.fixture
def project(trained, tmp_path) -> Path:
    """A copy of the trained project, its MLflow store included (its artifacts stay in the original's mlruns/)."""
    return Path(shutil.copytree(trained, tmp_path / "project", symlinks=True))


def stage(project: Path, module: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module]
    result = subprocess.run(
        command, cwd=project, env=stage_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, check=False
    )
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def registry_of(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def run_status(project: Path) -> str:
    run_id = trained_run(project)
    return registry_of(project).get_run(run_id).info.status


def champion(project: Path) -> str | None:
    holder = registry_of(project).get_registered_model(NAME).aliases.get("champion")
    return None if holder is None else str(holder)


def test_a_kill_right_after_registering_leaves_a_complete_version_that_the_rerun_reuses(project):
    """Before: the version had 0 tags (they were set one call at a time after it was made) and the run stayed
    RUNNING; the rerun registered a second version of the same model."""
    killed = stage(project, "tests.killed_export", check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    [version] = registry_of(project).search_model_versions(f"name='{NAME}'")
    weights = hashlib.sha256((project / "models" / "model.pt").read_bytes()).hexdigest()
    assert version.tags["weights_sha256"] == weights and version.tags["onnx_export"] == "opset 18, fp32"
    assert {"test_accuracy", "test_split", "classes", "test_correct", "git_commit"} <= set(version.tags)
    assert "test_resnet fine-tuned with `full` on images (3 classes)" in version.description
    assert run_status(project) == "FINISHED"  # its logging was done, and ended, before the version was made
    assert champion(project) is None
    assert not (project / "models" / "model.onnx").exists() and not (project / "metrics" / "export.json").exists()

    rerun = stage(project, "pipeline.stages.export")
    assert f"already registered (the same weights): {NAME} v1, now @champion" in rerun.stdout
    [again] = registry_of(project).search_model_versions(f"name='{NAME}'")
    assert (str(again.version), champion(project), run_status(project)) == ("1", "1", "FINISHED")
    assert json.loads((project / "metrics" / "export.json").read_text())["registered_version"] == 1
    assert (project / "models" / "model.onnx").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, the device whose writes find no space")
def test_a_full_disk_after_registering_deletes_the_version_and_fails_the_run(project):
    """metrics/export.json is written after the version is made (it records the version's number); the disk is
    full for it: its partial file is /dev/full. Before: the version stayed, and the rerun added a second."""
    (project / "metrics" / ".export.json.partial").symlink_to("/dev/full")
    failed = stage(project, "pipeline.stages.export", check=False)
    assert failed.returncode == 1 and "OSError: [Errno 28] No space left on device" in failed.stderr
    assert registry_of(project).search_model_versions(f"name='{NAME}'") == []
    assert run_status(project) == "FAILED"
    assert os.listdir(project / "models") == ["model.pt"]  # no model.onnx, no partial
    assert not (project / "metrics" / "export.json").exists()

    stage(project, "pipeline.stages.export")
    [version] = registry_of(project).search_model_versions(f"name='{NAME}'")
    assert version.tags["weights_sha256"] == hashlib.sha256((project / "models" / "model.pt").read_bytes()).hexdigest()
    assert (champion(project), run_status(project)) == (str(version.version), "FINISHED")
    assert json.loads((project / "metrics" / "export.json").read_text())["registered_version"] == int(version.version)
