"""A vision transformer with LoRA through the real pipeline: `dvc repro` in a temporary git repository (verdict
included), the adapters merged before export, the parity gate, the registry, and `bentoml serve` answering."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest

from pipeline.release import onnx_runtime
from tests.conftest import default_params, dvc_project
from tests.servers import running_service

pytestmark = pytest.mark.slow


def sh(project: Path, *command: str) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = default_params(
        **{
            "data.source": "data/builtin/digits",
            "data.max_per_class": 12,
            "model.backbone": "vit_tiny_patch16_224",
            "model.weights": "none",
            "finetune.strategy": "lora",
            "train.image_size": 32,
            "train.epochs": 2,
            "train.batch_size": 16,
        }
    )
    project = dvc_project(tmp_path_factory.mktemp("vit-project"), params)
    sh(project, "dvc", "repro")
    return project


def test_a_vit_with_lora_trains_exports_and_registers(project):
    train = json.loads((project / "metrics/train.json").read_text())
    assert 0 < train["trainable_params"] < train["total_params"] / 10  # adapters and the head
    exported = json.loads((project / "metrics/export.json").read_text())
    assert exported["parity_max_abs_diff"] < 1e-4
    session, card = onnx_runtime.open_session(project / "models/model.onnx")
    assert (card.backbone, card.strategy, card.image_size) == ("vit_tiny_patch16_224", "lora", 32)
    assert not any("lora" in node.name for node in session.get_inputs())  # a plain graph: the adapters are merged
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [version] = client.search_model_versions("name='digits-classifier'")
    assert (version.tags["strategy"], version.tags["backbone"]) == ("lora", "vit_tiny_patch16_224")
    verdict = json.loads((project / "reports/verdict/verdict.json").read_text())
    assert verdict["scores"]["batchnorm_shift"] == {}  # a ViT has no BatchNorm: no shift, no crash
    assert "no statistics shift to measure" in (project / "reports/verdict/verdict.md").read_text()


def test_the_service_answers_with_the_vit(project):
    with running_service({"SERVING_MODEL": str(project / "models/model.onnx")}) as url:
        image = next((project / "data/builtin/digits/3").iterdir()).read_bytes()
        answer = httpx.post(f"{url}/v1/classify", files={"image": ("3.png", image, "image/png")}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 3
        metadata = httpx.get(f"{url}/v1/metadata", timeout=30).json()
        assert (metadata["backbone"], metadata["strategy"]) == ("vit_tiny_patch16_224", "lora")
