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
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline.release.onnx_runtime import classify_files
from pipeline.tracking import store
from tests.conftest import stage_env, stage_project, trained_run
from tests.servers import free_port, running_service

MODEL_NAME = "shared-classifier"


@contextmanager
def mlflow_server(root: Path):
    """`mlflow server` (sqlite, proxied artifacts) on a free loopback port until the block ends;
    yields its URL and the process (a test may kill it)."""
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
        yield url, process
    finally:
        if process.poll() is None:  # the server and its workers; SIGTERM waits about 12 s for idle clients
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root) as (url, _):
        yield {"url": url, "root": root}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stage(project: Path, name: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{name}"],
        cwd=project,
        env=stage_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
    )


def test_unreachable_server_stops_a_stage_naming_it(in_tmp_project, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(store.TrackingServerUnreachable, match=f"MLFLOW_TRACKING_URI={uri} is unreachable"):
        store.check_reachable()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    store.check_reachable()  # the local sqlite store needs no server


@pytest.mark.slow
def test_stages_log_to_the_server_and_the_service_serves_its_champion(server, tmp_path):
    project = stage_project(tmp_path, **{"finetune.strategy": "head", "mlflow.registered_model": MODEL_NAME})
    for name in ("train", "evaluate", "export"):
        result = stage(project, name, server["url"])
        assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()  # nothing stayed local

    client = mlflow.MlflowClient(server["url"])
    run_id = trained_run(project, server["url"])
    run = client.get_run(run_id)
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert run.data.metrics["test/accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-4)
    assert run.data.params["finetune.strategy"] == "head"
    assert {"confusion_matrix.png", "params.yaml", "evaluate.json"} <= {a.path for a in client.list_artifacts(run_id)}
    assert list((server["root"] / "artifacts").rglob("confusion_matrix.png"))  # stored by the server, proxied
    [version] = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == version.version  # the first

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
    assert info["test_accuracy"] == pytest.approx(float(version.tags["test_accuracy"]))
    assert info["data_source"] == version.tags["data_source"] == "images"
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


@pytest.mark.slow
def test_a_server_lost_mid_training_stops_it_within_a_minute_with_a_checkpoint(tmp_path):
    project = stage_project(tmp_path / "project", **{"finetune.strategy": "full", "train.epochs": 400})
    (tmp_path / "server").mkdir()
    with mlflow_server(tmp_path / "server") as (url, process):
        training = subprocess.Popen(
            [sys.executable, "-m", "pipeline.stages.train"],
            cwd=project,
            env=stage_env(MLFLOW_TRACKING_URI=url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        checkpoint = project / "models/checkpoint.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists():  # waits for progress; when the server dies does not matter below
            assert training.poll() is None and time.monotonic() < deadline, training.communicate()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = training.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert training.returncode == 1
    assert f"training stopped: the MLflow tracking store {url} did not answer" in stderr
    assert "models/checkpoint.pt holds the last finished epoch" in stderr and checkpoint.exists()


def test_promote_refuses_an_unreachable_store_at_once(in_tmp_project):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.promote"],
        env=stage_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1 and f"not promoted: MLflow tracking server MLFLOW_TRACKING_URI={uri}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evaluate", "export"])
def test_a_stage_that_cannot_log_writes_nothing(tmp_path, name):
    project = stage_project(tmp_path, **{"finetune.strategy": "head"})
    trained = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train"], cwd=project, env=stage_env(), capture_output=True
    )
    assert trained.returncode == 0  # on the local sqlite store
    result = stage(project, name, f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "TrackingServerUnreachable" in result.stderr
    assert not (project / "models/model.onnx").exists()
    assert sorted(p.name for p in (project / "metrics").iterdir()) == [
        "prepare.json",
        "train.json",
        "train_history.csv",
    ]


@pytest.mark.slow
def test_credentials_in_the_uri_work_and_are_never_printed(server, monkeypatch):
    with_credentials = server["url"].replace("http://", "http://alice:s3cret@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_credentials)
    store.check_reachable()  # urllib alone cannot open such a URL
    assert mlflow.MlflowClient(with_credentials).search_experiments()  # nor does MLflow mind it
    dead = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(store.TrackingServerUnreachable) as error:
        store.check_reachable()
    assert "alice:***@127.0.0.1" in str(error.value) and "s3cret" not in str(error.value)
