"""`dvc repro` and `dvc exp run` of the real dvc.yaml in a temporary git repository, with a real
sqlite MLflow store: the run, its metrics, the registered model and the ONNX file are checked."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.data.manifest import read_manifest
from pipeline.data.splits import load_split
from pipeline.release import onnx_runtime
from tests.conftest import default_params, dvc_project, stage_env, trained_run

pytestmark = pytest.mark.slow


def run(project: Path, *command: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


def sh(project: Path, *command: str) -> str:
    result = run(project, *command)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def queue_status(project: Path) -> str:
    """`dvc queue status`, read again when it caught a worker's info file half-written.

    DVC 3 rewrites a running experiment's info file in place (`dvc.utils.serialize._modify_data`
    opens it for writing, then dumps), so a status read at that instant sees an empty file and fails
    with "Expecting value". Any other failure, or this one five times in a row, fails the test."""
    for _ in range(5):
        result = run(project, "dvc", "queue", "status")
        if result.returncode == 0:
            return result.stdout
        if "Expecting value" not in result.stdout + result.stderr:
            break
        time.sleep(1)
    raise AssertionError(f"dvc queue status failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = default_params(
        **{
            "data.source": "data/builtin/digits",
            "data.max_per_class": 12,
            "train.image_size": 32,
            "train.epochs": 2,
            "finetune.head_epochs": 3,
            "train.batch_size": 16,
            "finetune.strategy": "partial",
        }
    )
    project = dvc_project(tmp_path_factory.mktemp("project"), params)
    sh(project, "dvc", "repro")
    # committed as the project's results are: an experiment then reruns only what its settings change (with the
    # verdict's git-tracked report uncommitted, every `dvc exp run --temp` would run the verdict again)
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    return project


def client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_one_mlflow_run_holds_every_stage(project):
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    exported = json.loads((project / "metrics/export.json").read_text())
    train = json.loads((project / "metrics/train.json").read_text())
    run_id = trained_run(project)
    run = client(project).get_run(run_id)
    # 4 significant digits, which the MLflow UI shows whole; counts exact
    assert run.data.metrics["test/accuracy"] == float(f"{evaluation['accuracy']:.4g}")
    assert run.data.metrics["model/trainable_params"] == train["trainable_params"] < train["total_params"]
    assert run.data.metrics["export/parity_max_abs_diff"] == float(f"{exported['parity_max_abs_diff']:.4g}")
    assert len(client(project).get_metric_history(run_id, "val/accuracy")) == 2  # partial: train.epochs
    groups = {name.split("/")[0] for name in run.data.metrics}
    assert groups == {"train", "val", "test", "per_class", "model", "export"}
    assert run.data.params["finetune.strategy"] == "partial"
    # the commit it ran at: the one before its results were committed
    ran_at = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git_commit"] == ran_at
    artifacts = {a.path for a in client(project).list_artifacts(run_id)}
    assert {"confusion_matrix.png", "params.yaml", "evaluate.json", "train_history.csv"} <= artifacts
    [logged] = run.outputs.model_outputs  # MLflow 3 links the ONNX model to the run's page as a logged model
    assert client(project).get_logged_model(logged.model_id).source_run_id == run_id


def test_the_run_says_what_ran_in_the_mlflow_ui(project):
    run = client(project).get_run(trained_run(project))
    experiment = client(project).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    assert experiment.name == "digits"  # the data's own experiment
    accuracy = json.loads((project / "metrics/evaluate.json").read_text())["accuracy"]
    described = experiment.tags["mlflow.note.content"]  # the strategies tried on digits, rebuilt by evaluate
    assert f"| `partial` | {accuracy:.4f} |" in described and f"runs/{run.info.run_id})" in described
    assert "the head is enough" in described or "fine-tune" in described  # the verdict's answer
    assert run.info.run_name == "partial · efficientnet_lite0"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("`partial` fine-tuning of efficientnet_lite0 (DEFAULT weights) on data/builtin/digits")
    accuracy = json.loads((project / "metrics/evaluate.json").read_text())["accuracy"]
    assert f"test accuracy {accuracy:.4f}" in note and "10 classes (0, 1, 2" in note
    [dataset_input] = run.inputs.dataset_inputs
    manifest = hashlib.sha256((project / "data/prepared/manifest.csv").read_bytes()).hexdigest()
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("digits", manifest[:16])
    assert "data/builtin/digits" in dataset_input.dataset.source
    tags = {tag.key: tag.value for tag in dataset_input.tags}
    assert tags["classes"].startswith("0, 1, 2") and int(tags["test_images"]) > 0


def test_the_version_is_tagged_described_and_champion_as_the_first(project):
    exported = json.loads((project / "metrics/export.json").read_text())
    run_id = trained_run(project)
    # the fixture's own version: experiments of other tests may have added later ones
    [version] = client(project).search_model_versions(f"name='digits-classifier' and run_id='{run_id}'")
    assert exported["registered_version"] == int(version.version) == 1
    assert int(client(project).get_model_version_by_alias("digits-classifier", "champion").version) == 1
    tags = version.tags
    assert float(tags["test_accuracy"]) == pytest.approx(exported["onnx_test_accuracy"], abs=1e-6)
    assert (tags["strategy"], tags["backbone"]) == ("partial", "efficientnet_lite0")
    assert tags["data_source"] == "data/builtin/digits"
    assert json.loads(tags["classes"]) == [str(d) for d in range(10)] and len(tags["git_commit"]) == 40
    assert "on data/builtin/digits (10 classes)" in version.description


def test_onnx_model_reproduces_the_evaluated_accuracy_and_carries_the_card(project, monkeypatch):
    monkeypatch.chdir(project)
    session, card = onnx_runtime.open_session(project / "models/model.onnx")
    test = load_split(read_manifest(), "test", card.image_size, 10**7, "memory")
    probabilities = onnx_runtime.probabilities(session, test.images.numpy())
    accuracy = float((probabilities.argmax(1) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(json.loads((project / "metrics/evaluate.json").read_text())["accuracy"])
    assert card.classes == [str(d) for d in range(10)] and (card.strategy, card.image_size) == ("partial", 32)
    manifest = (project / "data/prepared/manifest.csv").read_bytes()
    assert card.data_fingerprint == hashlib.sha256(manifest).hexdigest()


def test_settings_that_do_not_change_the_model_do_not_retrain_it(project):
    params = project / "params.yaml"
    original = params.read_text()
    changed = yaml.safe_load(original)
    changed["mlflow"]["experiment"] = "renamed"
    changed["train"]["loader_workers"] = 1
    params.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        assert "Data and pipelines are up to date" in sh(project, "dvc", "status")
        changed["train"]["lr"] = 0.01
        params.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert "train.lr" in sh(project, "dvc", "status")  # and one that does, does
    finally:
        params.write_text(original)


def test_second_repro_does_nothing(project):
    assert "Data and pipelines are up to date" in sh(project, "dvc", "repro")


def digits_versions(project: Path) -> int:
    return len(client(project).search_model_versions("name='digits-classifier'"))


def test_experiment_in_a_temp_copy_logs_to_the_project_store(project):
    before = digits_versions(project)
    sh(project, "dvc", "exp", "run", "--temp", "-n", "probe", "-S", "finetune.strategy=head")
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    experiment = client(project).get_experiment_by_name("digits")
    assert experiment.artifact_location == (project / "mlruns").as_uri()
    runs = client(project).search_runs([experiment.experiment_id])
    probe = [r for r in runs if r.data.tags.get("dvc_experiment") == "probe"]
    assert len(probe) == 1 and probe[0].data.params["finetune.strategy"] == "head"
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json"))
    text = json.dumps(shown)
    assert "probe" in text and "trainable_params" in text
    assert digits_versions(project) == before + 1  # the first stays champion: only promote moves it
    assert int(client(project).get_model_version_by_alias("digits-classifier", "champion").version) == 1


def test_a_model_of_other_classes_lands_in_its_own_registered_model(project):
    shapes = ["-S", "data.source=data/builtin/animal-shape", "-S", "data.max_per_class=6"]
    before = digits_versions(project)
    sh(project, "dvc", "exp", "run", "--temp", "-n", "shapes", *shapes)
    [version] = client(project).search_model_versions("name='animal-shape-classifier'")
    assert version.tags["data_source"] == "data/builtin/animal-shape" and version.tags["dvc_experiment"] == "shapes"
    shapes = client(project).get_experiment_by_name("animal-shape")  # its runs in its data's experiment, not digits'
    assert client(project).get_run(version.run_id).info.experiment_id == shapes.experiment_id
    assert {r.data.tags.get("kind", "train") for r in client(project).search_runs([shapes.experiment_id])} == {
        "verdict",
        "train",
    }
    digits = client(project).get_experiment_by_name("digits")
    assert not client(project).search_runs([digits.experiment_id], "params.`data.source` = 'data/builtin/animal-shape'")
    assert digits_versions(project) == before


def trained_by_experiment(project: Path, name: str):
    """The MLflow training run of DVC experiment `name`."""
    experiment = client(project).get_experiment_by_name("digits")  # the data's own experiment
    runs = client(project).search_runs([experiment.experiment_id], f"tags.dvc_experiment = '{name}'")
    [trained] = [r for r in runs if r.data.tags.get("kind") != "verdict"]
    return trained


def test_strategy_verdict_trains_what_the_verdict_answers_and_follows_a_new_answer(project):
    """Two experiments that differ only in a verdict setting: the head is enough below a 100-point bar, not
    below a 0-point one (the rule expects a positive gain on these digits), and train follows each answer."""
    for name, worth_it in (("judged-head", 100), ("judged-tune", 0)):
        settings = ["-S", "finetune.strategy=verdict", "-S", f"verdict.worth_it={worth_it}"]
        sh(project, "dvc", "exp", "run", "--temp", "-n", name, *settings)
    head, tuned = trained_by_experiment(project, "judged-head"), trained_by_experiment(project, "judged-tune")
    assert head.data.params["finetune.strategy"] == "head"
    assert head.data.tags["strategy.chosen_by"] == "the verdict: the head is enough"
    assert tuned.data.params["finetune.strategy"] in ("full", "partial")
    assert tuned.data.tags["strategy.chosen_by"].startswith("the verdict: fine-tune")
    assert tuned.data.metrics["model/trainable_params"] > head.data.metrics["model/trainable_params"]


def find_experiment(shown, name: str) -> dict:
    """The `data` of experiment `name` anywhere in `dvc exp show --json`."""
    if isinstance(shown, dict):
        if shown.get("name") == name and "data" in shown:
            return shown["data"]
        shown = list(shown.values())
    for item in shown if isinstance(shown, list) else []:
        found = find_experiment(item, name)
        if found:
            return found
    return {}


def test_queued_experiments_on_two_workers_do_not_clobber_each_other(project, tmp_path):
    strategies = {"q-head": "head", "q-norm": "norm"}
    # head_epochs 2: not the params of the `probe` experiment above, which DVC would restore from its run cache;
    # up to the train stage only, to keep the test short (evaluate and export reopen the run train started)
    queue = ["dvc", "exp", "run", "--queue", "-S", "finetune.head_epochs=2"]
    for name, strategy in strategies.items():
        sh(project, *queue, "-n", name, "-S", f"finetune.strategy={strategy}", "train")
    # The workers outlive `dvc queue start` and keep its stdout: a pipe there would block this test until they exit.
    with open(tmp_path / "queue-start.log", "w") as log:
        command = ["dvc", "queue", "start", "-j", "2"]
        subprocess.run(command, cwd=project, env=stage_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    try:
        deadline = time.monotonic() + 900
        while any(word in (status := queue_status(project)) for word in ("Queued", "Running")):
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        sh(project, "dvc", "queue", "stop")  # an idle worker may otherwise wait for tasks forever
    assert status.count("Success") == 2, status + sh(project, "dvc", "queue", "logs", "q-head")
    experiment = client(project).get_experiment_by_name("digits")
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json"))
    for name, strategy in strategies.items():
        [run] = client(project).search_runs([experiment.experiment_id], f"tags.dvc_experiment = '{name}'")
        assert run.info.status == "FINISHED" and run.data.params["finetune.strategy"] == strategy
        data = find_experiment(shown, name)
        assert data["params"]["params.yaml"]["data"]["finetune"]["strategy"] == strategy
        trained = data["metrics"]["metrics/train.json"]["data"]
        # each experiment's outputs hold its own run's numbers, not the other's
        assert trained["trainable_params"] == run.data.metrics["model/trainable_params"]
        assert run.data.metrics["val/best_accuracy"] == float(f"{trained['best_val_accuracy']:.4g}")
        assert len(client(project).get_metric_history(run.info.run_id, "val/accuracy")) == 2  # its own epochs only
    trained = {n: find_experiment(shown, n)["metrics"]["metrics/train.json"]["data"] for n in strategies}
    assert trained["q-head"]["trainable_params"] < trained["q-norm"]["trainable_params"]


def test_make_experiments_shows_strategy_and_accuracy_first_in_80_columns(project):
    """The Makefile's command, on this project's experiments, as a terminal of 80 columns shows it."""
    env = stage_env(COLUMNS="80")
    command = [sys.executable, "-m", "pipeline.commands.experiments"]
    shown = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=True).stdout
    lines = shown.splitlines()
    assert lines[0].split()[:3] == ["strategy", "accuracy", "experiment"] and max(map(len, lines)) <= 80
    accuracy = json.loads((project / "metrics/evaluate.json").read_text())["accuracy"]
    # the workspace comes first: the fixture's own `dvc repro`
    assert lines[1].split()[:3] == ["partial", f"{accuracy:.4f}", "workspace"] and "digits" in lines[1]


def test_a_fresh_clone_pulls_from_the_remote_and_has_nothing_to_reproduce(project, tmp_path):
    # a copy: the commit and the remote below would change the HEAD and config the other tests read
    project = shutil.copytree(project, tmp_path / "project", symlinks=True)
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    sh(project, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results and the remote")
    sh(project, "dvc", "push")
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "models/model.onnx").exists()
    sh(clone, "dvc", "pull")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "repro")
    assert (clone / "models/model.onnx").read_bytes() == (project / "models/model.onnx").read_bytes()
    assert (clone / "models/model.pt").read_bytes() == (project / "models/model.pt").read_bytes()
    assert "analytics = false" in (clone / ".dvc/config").read_text()
