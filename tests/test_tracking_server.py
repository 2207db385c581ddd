"""A shared tracking server: a real `mlflow server` (sqlite backend, proxied artifact root) on a
loopback port. The stages log to it through MLFLOW_TRACKING_URI, artifacts included; `bentoml serve`
resolves models:/NAME@champion through it; an unreachable server stops a stage at once, named."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import tracking
from pipeline.onnx_model import classify_files
from tests.conftest import stage_env, stage_project
from tests.servers import free_port, running_service

MODEL_NAME = "shared-classifier"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` until the module ends; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=root, env=stage_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server was not ready after 120 s"
            time.sleep(0.5)
        yield {"url": url, "root": root}
    finally:
        # the server and the workers it started; SIGTERM would wait about 12 s for idle client connections
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stage(project: Path, name: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{name}"],
        cwd=project,
        env=stage_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
    )


def test_unreachable_server_stops_a_stage_naming_it(in_tmp_project, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.TrackingServerUnreachable, match=f"MLFLOW_TRACKING_URI={uri} is unreachable"):
        tracking.check_reachable()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.check_reachable()  # the local sqlite store needs no server


@pytest.mark.slow
def test_stages_log_to_the_server_and_the_service_serves_its_champion(server, tmp_path):
    project = stage_project(tmp_path, **{"finetune.strategy": "head", "mlflow.registered_model": MODEL_NAME})
    for name in ("train", "evaluate", "export"):
        result = stage(project, name, server["url"])
        assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()  # nothing stayed local

    client = mlflow.MlflowClient(server["url"])
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert run.data.params["finetune.strategy"] == "head"
    assert {"confusion_matrix.png", "params.yaml", "evaluate.json"} <= {a.path for a in client.list_artifacts(run_id)}
    assert list((server["root"] / "artifacts").rglob("confusion_matrix.png"))  # stored by the server, proxied
    [version] = client.search_model_versions(f"name='{MODEL_NAME}'")
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)

    pixels = np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    expected, card = classify_files(project / "models/model.onnx", [buffer.getvalue()])
    classes = card.classes
    env = {"SERVING_MODEL": f"models:/{MODEL_NAME}@champion", "MLFLOW_TRACKING_URI": server["url"]}
    with running_service(env) as url:
        answer = httpx.post(
            f"{url}/v1/classify",
            files={"image": ("x.png", buffer.getvalue())},
            data={"top_k": str(len(classes))},
            timeout=60,
        )
        info = httpx.get(f"{url}/v1/metadata").json()
    assert answer.status_code == 200, answer.text
    assert (info["name"], info["version"], info["alias"]) == (MODEL_NAME, int(version.version), "champion")
    served = {item["label"]: item["probability"] for item in answer.json()["predictions"]}
    np.testing.assert_allclose([served[c] for c in classes], expected[0], atol=1e-6)


@pytest.mark.slow
def test_train_stage_fails_at_once_when_the_server_is_down(tmp_path):
    project = stage_project(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    result = stage(project, "train", uri)
    assert result.returncode == 1
    assert f"TrackingServerUnreachable: MLflow tracking server MLFLOW_TRACKING_URI={uri} is unreachable" in (
        result.stderr
    )
    assert not (project / "models").exists()  # it stopped before loading the data or starting a run
