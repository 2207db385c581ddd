"""The train stage as real processes: `torchrun` with 2 gloo processes against one process, and runs
killed right after a checkpoint (tests/killed_training.py: a known point, not a race with a signal sent
from here), then resumed, against uninterrupted ones."""

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.finetune import distributed
from pipeline.finetune.loop import whole_split
from tests.conftest import ROOT, stage_env, stage_project, trained_run
from tests.servers import free_port

pytestmark = pytest.mark.slow
SINGLE = [sys.executable, "-m", "pipeline.stages.train"]
TWO_GLOO = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "pipeline.stages.train"]
# Two phases (cached-feature head, then the whole network) and batches of 17 over 18 training images,
# split unevenly between 2 processes: 9 + 8, then 1 + none. SGD: AdamW divides each step by sqrt(v),
# which magnifies float rounding on near-zero gradients (README: Multi-GPU).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # deterministic CPU kernels, as each torchrun process has by default
# Seed 3: this tiny run learns (val accuracy 0.33 to 0.67), and 1 and 2 processes end 1.2e-7 apart. With
# seed 0 a later epoch amplifies the gradients' summing order to 7.9e-4: whether a test passed then
# depended on how two threads happened to sum.
RUN = {
    "seed": 3,
    "finetune.strategy": "lp-ft",
    "finetune.head_epochs": 1,
    "train.epochs": 3,
    "train.batch_size": 17,
    "train.optimizer": "sgd",
    "train.lr": 0.1,
}


def outputs(project: Path, result: subprocess.CompletedProcess) -> dict:
    with open(project / "metrics/train_history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    return {
        "weights": torch.load(project / "models/model.pt", weights_only=True)["state_dict"],
        "history": history,
        "metrics": json.loads((project / "metrics/train.json").read_text()),
        "run_id": trained_run(project),
        "stdout": result.stdout,
    }


def train(project: Path, command: list[str], **env: str) -> dict:
    result = subprocess.run(command, cwd=project, env=stage_env(**env), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert not (project / "models/checkpoint.pt").exists()  # deleted once the outputs are complete
    return outputs(project, result)


def killed_after_epoch(project: Path, command: list[str], epoch: int, **env: str) -> subprocess.CompletedProcess:
    """Train until the checkpoint of `epoch` is written, where every process kills itself (SIGKILL)."""
    (project / "models/model.pt").unlink()  # as DVC does before it reruns a stage
    killer = [*command[:-1], "tests.killed_training", str(epoch)]  # the stage's module, run by the test's
    env = stage_env(**env, PYTHONPATH=str(ROOT))  # tests/ from the checkout, pipeline/ from the project copy
    result = subprocess.run(killer, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert torch.load(project / "models/checkpoint.pt", weights_only=True)["epoch"] == epoch
    return result


def assert_same_training(resumed: dict, uninterrupted: dict) -> None:
    """Equal up to float rounding. With one thread per process (torchrun's default; ONE_THREAD for a
    single process) the CPU kernels are bit-reproducible and the runs are 0.0 apart; resuming adds no
    difference of its own (a resumed fit in tests/test_checkpoint.py is compared bit for bit)."""
    assert max_difference(resumed["weights"], uninterrupted["weights"]) < 1e-6
    assert len(resumed["history"]) == len(uninterrupted["history"])
    for again, first in zip(resumed["history"], uninterrupted["history"], strict=True):
        assert (again["epoch"], again["phase"], again["train_accuracy"], again["val_accuracy"]) == (
            first["epoch"],
            first["phase"],
            first["train_accuracy"],
            first["val_accuracy"],
        )
        for loss in ("train_loss", "val_loss"):
            assert float(again[loss]) == pytest.approx(float(first[loss]), abs=1e-6)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = stage_project(tmp_path_factory.mktemp("ddp"), **RUN)  # augmentation on: per-image seeds
    with open(project / "data/prepared/manifest.csv", newline="") as f:
        assert sum(row["split"] == "train" for row in csv.DictReader(f)) == 18  # as RUN's batches assume
    return project


@pytest.fixture(scope="module")
def single(project) -> dict:
    return train(project, SINGLE, **ONE_THREAD)


def run_ids(project: Path) -> set[str]:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("images").experiment_id])}


@pytest.fixture(scope="module")
def two_gloo(project, single) -> dict:
    before = run_ids(project)
    trained = train(project, TWO_GLOO)
    return trained | {"new_runs": run_ids(project) - before}


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
    # rank 0 alone logged: one new MLflow run for the two processes, with the whole history
    assert two_gloo["new_runs"] == {two_gloo["run_id"]} and single["run_id"] != two_gloo["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(two_gloo["run_id"], "val/accuracy")] == [1, 2, 3, 4]


def test_without_a_terminal_each_epoch_prints_one_plain_line(single, two_gloo):
    for result in (single, two_gloo):  # the main process alone: one line per epoch, not one per process
        lines = [line for line in result["stdout"].splitlines() if " (epoch " in line]
        assert [re.match(r"lp-ft: (\S+) \d/\d \(epoch (\d)\)", line).groups() for line in lines] == [
            ("head", "1"),
            ("fine-tune", "2"),
            ("fine-tune", "3"),
            ("fine-tune", "4"),
        ]
        numbers = r"train loss \d+\.\d{4} accuracy [01]\.\d{4}, val loss \d+\.\d{4} accuracy [01]\.\d{4}, \d+\.\d s$"
        assert all(re.search(numbers, line) for line in lines), lines


def test_two_killed_processes_resume_to_the_same_weights(project, two_gloo):
    killed = killed_after_epoch(project, TWO_GLOO, epoch=1)
    assert killed.returncode != 0 and not (project / "models/model.pt").exists()
    resumed = train(project, TWO_GLOO)
    assert "resuming from models/checkpoint.pt: epoch 1 (head) done" in resumed["stdout"]
    assert_same_training(resumed, two_gloo)


def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(project, single):
    before = run_ids(project)
    killed = killed_after_epoch(project, SINGLE, epoch=2, **ONE_THREAD)  # mid-phase: optimizer state too
    assert killed.returncode == -signal.SIGKILL and not (project / "models/model.pt").exists()
    [killed_run] = run_ids(project) - before
    resumed = train(project, SINGLE, **ONE_THREAD)
    assert "resuming from models/checkpoint.pt: epoch 2 (fine-tune) done" in resumed["stdout"]
    assert_same_training(resumed, single)
    assert resumed["metrics"]["best_val_accuracy"] == single["metrics"]["best_val_accuracy"]
    # the resumed training finishes the killed run's MLflow run instead of leaving it behind
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert resumed["run_id"] == killed_run and client.get_run(killed_run).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(killed_run, "val/accuracy")}) == [1, 2, 3, 4]


def pass_shares(rank: int, port: int, total: int, batch_size: int, results) -> None:
    """One of two gloo processes: its share of each global batch of a pass over image numbers 0..total-1."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    shares = [
        distributed.share(torch.arange(start, min(start + batch_size, total))) for start in range(0, total, batch_size)
    ]
    results[rank] = whole_split(shares, total, batch_size).tolist()
    torch.distributed.destroy_process_group()


def test_two_processes_assemble_the_whole_split_from_their_shares_of_each_batch():
    """Validation classes per image under torchrun: 11 images in batches of 4, split 2 + 2, 2 + 2, 2 + 1."""
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(pass_shares, args=(free_port(), 11, 4, results), nprocs=2)
    assert results[0] == results[1] == list(range(11))
