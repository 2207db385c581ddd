"""The train stage as real processes: `torchrun` with 2 gloo processes against one process, and runs
killed with SIGKILL / SIGTERM after a checkpoint, then resumed, against uninterrupted ones."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from tests.conftest import stage_env, stage_project

pytestmark = pytest.mark.slow
SINGLE = [sys.executable, "-m", "pipeline.train"]
TWO_GLOO = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "pipeline.train"]
# Two phases (cached-feature head, then the whole network) and batches of 17 over 18 training images,
# split unevenly between 2 processes: 9 + 8, then 1 + none. SGD: AdamW divides each step by sqrt(v),
# which magnifies float rounding on near-zero gradients (README: Multi-GPU).
RUN = {
    "finetune.strategy": "lp-ft",
    "finetune.head_epochs": 1,
    "train.epochs": 3,
    "train.batch_size": 17,
    "train.optimizer": "sgd",
    "train.lr": 0.1,
}
TIMING = ("epoch_seconds", "images_per_second")


def outputs(project: Path, result: subprocess.CompletedProcess) -> dict:
    with open(project / "metrics/train_history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    return {
        "weights": torch.load(project / "models/model.pt", weights_only=True)["state_dict"],
        "history": history,
        "metrics": json.loads((project / "metrics/train.json").read_text()),
        "run_id": json.loads((project / "models/run.json").read_text())["run_id"],
        "stdout": result.stdout,
    }


def train(project: Path, command: list[str]) -> dict:
    result = subprocess.run(command, cwd=project, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert not (project / "models/checkpoint.pt").exists()  # deleted once the outputs are complete
    return outputs(project, result)


def checkpointed_epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else 0  # replaced atomically


def kill_after_checkpoint(project: Path, command: list[str], sig: signal.Signals, epoch: int = 1) -> int:
    """Start training, send `sig` once the checkpoint holds `epoch`; return the exit status."""
    checkpoint = project / "models/checkpoint.pt"
    (project / "models/model.pt").unlink()  # as DVC does before it reruns a stage
    process = subprocess.Popen(command, cwd=project, env=stage_env(), stdout=subprocess.DEVNULL)
    while checkpointed_epoch(checkpoint) < epoch and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(sig)
    return process.wait(timeout=120)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = stage_project(tmp_path_factory.mktemp("ddp"), **RUN)  # augmentation on: per-image seeds
    with open(project / "data/prepared/manifest.csv", newline="") as f:
        assert sum(row["split"] == "train" for row in csv.DictReader(f)) == 18  # as RUN's batches assume
    return project


@pytest.fixture(scope="module")
def single(project) -> dict:
    return train(project, SINGLE)


@pytest.fixture(scope="module")
def two_gloo(project, single) -> dict:
    return train(project, TWO_GLOO)


def test_two_gloo_processes_train_the_weights_of_one(single, two_gloo, project):
    difference = max_difference(single["weights"], two_gloo["weights"])
    print(f"max |weight difference| 2 gloo processes vs 1: {difference:.2e}")
    assert 0 < difference < 1e-5  # not bitwise (gradients are summed in another order), within rounding
    assert single["metrics"]["best_epoch"] > 1  # the weights compared are fine-tuned ones, not the head's
    assert len(two_gloo["history"]) == len(single["history"]) == 4
    for one, two in zip(single["history"], two_gloo["history"], strict=True):
        assert (one["phase"], one["train_accuracy"], one["val_accuracy"]) == (
            two["phase"],
            two["train_accuracy"],
            two["val_accuracy"],
        )
        assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), abs=1e-5)
        assert float(two["val_loss"]) == pytest.approx(float(one["val_loss"]), abs=1e-5)
    assert "on 2 processes" in two_gloo["stdout"] and "processes" not in single["stdout"]
    # rank 0 alone logged: one MLflow run per training, the second with the whole history
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("transfer-learning").experiment_id])
    assert {r.info.run_id for r in runs} == {single["run_id"], two_gloo["run_id"]}
    assert [m.step for m in client.get_metric_history(two_gloo["run_id"], "val_accuracy")] == [1, 2, 3, 4]


def test_two_processes_stopped_with_sigterm_resume_to_the_same_weights(project, two_gloo):
    status = kill_after_checkpoint(project, TWO_GLOO, signal.SIGTERM)
    assert status != 0 and not (project / "models/model.pt").exists()
    resumed = train(project, TWO_GLOO)
    assert "resuming from models/checkpoint.pt" in resumed["stdout"]
    assert max_difference(resumed["weights"], two_gloo["weights"]) == 0
    assert without_timing(resumed["history"]) == without_timing(two_gloo["history"])


def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(project, single):
    status = kill_after_checkpoint(project, SINGLE, signal.SIGKILL, epoch=2)  # mid-phase: optimizer state too
    assert status == -signal.SIGKILL
    assert (project / "models/checkpoint.pt").exists() and not (project / "models/model.pt").exists()
    killed_run = json.loads((project / "models/run.json").read_text())["run_id"]
    resumed = train(project, SINGLE)
    done = int(resumed["stdout"].split("resuming from models/checkpoint.pt: epoch ")[1].split()[0])
    assert 2 <= done < 4
    assert max_difference(resumed["weights"], single["weights"]) == 0
    assert without_timing(resumed["history"]) == without_timing(single["history"])
    assert resumed["metrics"]["best_val_accuracy"] == single["metrics"]["best_val_accuracy"]
    # the resumed training finishes the killed run's MLflow run instead of leaving it behind
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert resumed["run_id"] == killed_run and client.get_run(killed_run).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(killed_run, "val_accuracy")}) == [1, 2, 3, 4]
