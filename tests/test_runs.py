"""The MLflow run helpers of pipeline.tracking.runs on a real sqlite store."""

import re
import warnings

import mlflow
import pytest

from pipeline.tracking import runs


def test_the_dataset_is_logged_without_mlflows_ambiguous_source_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # its own experiment: the active one of an earlier test in this process belongs to another store
    experiment_id = mlflow.create_experiment("runs", artifact_location=(tmp_path / "mlruns").as_uri())
    rows = [{"path": f"a/{i}.png", "label": "ab"[i % 2], "split": ["train", "val", "test"][i % 3]} for i in range(6)]
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run(experiment_id=experiment_id) as run:
        warnings.simplefilter("always")
        runs.log_dataset("data/builtin/digits", rows, "f" * 64)
    assert [str(w.message) for w in caught if "dataset source" in str(w.message)] == []
    [logged] = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("digits", "f" * 16)
    assert '"uri": "data/builtin/digits"' in logged.dataset.source


def test_the_run_that_trained_a_weights_file_is_found_by_its_hash_and_a_file_none_trained_is_named(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("runs", artifact_location=(tmp_path / "mlruns").as_uri())
    weights, other = tmp_path / "model.pt", tmp_path / "other.pt"
    weights.write_bytes(b"the weights")
    other.write_bytes(b"weights no run trained")
    older, newer = (client.create_run(experiment_id, start_time=t) for t in (1_000, 2_000))  # trained twice
    for run in (older, newer):
        client.set_tag(run.info.run_id, runs.WEIGHTS_TAG, runs.weights_sha256(weights))
    assert runs.trained_run_id(client, weights) == newer.info.run_id
    with pytest.raises(runs.NoTrainingRun, match=rf"trained {re.escape(str(other))} \(sha256 [0-9a-f]{{12}}\)"):
        runs.trained_run_id(client, other)
