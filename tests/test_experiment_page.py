"""What the MLflow UI opens on, in a real sqlite store: one experiment per dataset, its description a table of the
strategies tried on that data, and the link `make ui` prints (pipeline.tracking.experiment_page)."""

import json

import mlflow
import pytest
import yaml

from pipeline.commands import ui_link
from pipeline.config import parse_params
from pipeline.tracking import experiment_page, runs
from tests.conftest import default_params


@pytest.fixture
def project(in_tmp_project, monkeypatch):
    """The working directory as the project, with its own sqlite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    yield in_tmp_project
    mlflow.set_tracking_uri(None)  # set_tracking_uri exported the store's URI to the environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def params_of(source: str, **overrides):
    return parse_params(default_params(**{"data.source": source, **overrides}))


def client(project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def trained(params, accuracy: float, trainable: int, seconds: float) -> str:
    """A training as the stages log it: train's params and counts, then evaluate's test accuracy."""
    with runs.start_run(params) as run:
        runs.log_metrics({"model/trainable_params": trainable, "train/seconds": seconds})
        runs.log_metrics({"test/accuracy": accuracy})
    return run.info.run_id


def test_each_dataset_has_its_own_experiment_named_after_it_unless_params_name_one(project):
    digits = trained(params_of("data/builtin/digits"), 0.9, 1000, 5.0)
    shapes = trained(params_of("data/builtin/animal-shape"), 0.8, 2000, 6.0)
    mine = trained(params_of("data/builtin/digits", **{"mlflow.experiment": "mine"}), 0.7, 3000, 7.0)
    for name, run_id in (("digits", digits), ("animal-shape", shapes), ("mine", mine)):
        experiment = client(project).get_experiment_by_name(name)
        assert [r.info.run_id for r in client(project).search_runs([experiment.experiment_id])] == [run_id]
        assert experiment.tags.items() >= runs.EXPERIMENT_TAGS.items()  # machine learning kind, the saved view
        assert experiment.artifact_location == (project / "mlruns").as_uri()


def test_the_description_lists_the_strategies_tried_best_first_then_the_verdict(project):
    params = params_of("data/builtin/digits", **{"finetune.strategy": "head"})
    trained(params, 0.8125, 12_810, 3.25)
    best = trained(params_of("data/builtin/digits", **{"finetune.strategy": "full"}), 0.9, 3_400_000, 41.0)
    with mlflow.start_run(run_name="compare"), mlflow.start_run(nested=True):  # a comparison's trial, in its report
        runs.log_metrics({"test/accuracy": 0.99})
    tags = {"kind": "verdict", "verdict.strategy": "head", "verdict.decision": "the head is enough"}
    with mlflow.start_run(run_name="verdict · digits", tags=tags | {"verdict.certainty": "unsure"}) as verdict:
        pass

    rows = experiment_page.describe_experiment(verdict.info.experiment_id, "digits")

    assert [(row.strategy, row.test_accuracy) for row in rows] == [("full", 0.9), ("head", 0.8125), ("head", None)]
    note = client(project).get_experiment(verdict.info.experiment_id).tags[experiment_page.NOTE_TAG]
    lines = note.splitlines()
    assert lines[0].startswith("Strategies tried on `digits`")
    assert lines[2] == "| strategy | test accuracy | trained parameters | train seconds | verdict | run |"
    assert lines[4].startswith("| `full` | 0.9000 | 3,400,000 | 41.0 |  | [full · efficientnet_lite0](")
    assert f"(#/experiments/{verdict.info.experiment_id}/runs/{best})" in lines[4]
    assert lines[5].startswith("| `head` | 0.8125 | 12,810 | 3.2 |")
    assert lines[6].startswith("| `head` |  |  |  | the head is enough, unsure | [verdict · digits](")
    assert len(lines) == 7 and "0.99" not in note and "compare" not in note


def test_the_link_opens_the_current_datasets_runs_on_the_saved_view(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "data/builtin/digits"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert ui_link.link("http://127.0.0.1:5000") == (
        "no runs on `digits` yet: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
    trained(params_of("data/builtin/animal-shape"), 0.8, 2000, 6.0)  # another dataset's experiment, made first
    trained(params_of("data/builtin/digits"), 0.9, 1000, 5.0)
    experiment = client(project).get_experiment_by_name("digits")
    client(project).delete_experiment_tag(experiment.experiment_id, experiment_page.VIEW_TAG)  # as made before it

    shown = ui_link.link("http://127.0.0.1:5000/")

    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    query = "viewStateShareKey=strategies&workflowType=machine_learning"
    assert shown == f"runs on `digits`, best test accuracy first: {url}?{query}"
    envelope = json.loads(client(project).get_experiment(experiment.experiment_id).tags[experiment_page.VIEW_TAG])
    state = json.loads(envelope["state"])
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test/accuracy`", False)
    assert state["selectedColumns"][:2] == ["params.`finetune.strategy`", "metrics.`test/accuracy`"]
