import pytest
from mlflow import MlflowClient

from pipeline.promote import PromotionError, promote

NAME = "classifier"


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    """A real sqlite registry with versions 1..3 whose runs scored 0.90, 0.80 and 0.95."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("promote", artifact_location=(tmp_path / "mlruns").as_uri())
    client.create_registered_model(NAME)
    for accuracy in (0.90, 0.80, 0.95):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "test_accuracy", accuracy)
        client.create_model_version(NAME, source=(tmp_path / "model").as_uri(), run_id=run.info.run_id)
    return client


def champion(client) -> int:
    return int(client.get_model_version_by_alias(NAME, "champion").version)


def test_newest_version_becomes_champion_by_default(client):
    candidate, previous = promote(client, NAME)
    assert (candidate.version, previous, champion(client)) == (3, None, 3)


def test_a_worse_model_is_refused_unless_forced(client):
    promote(client, NAME, version=1)
    with pytest.raises(PromotionError, match=r"v2 has test accuracy 0.8000, below champion v1 \(0.9000\).*--force"):
        promote(client, NAME, version=2)
    assert champion(client) == 1
    candidate, previous = promote(client, NAME, version=2, force=True)
    assert champion(client) == 2 and previous.version == 1


def test_a_better_model_replaces_the_champion(client):
    promote(client, NAME, version=1)
    promote(client, NAME, version=3)
    assert champion(client) == 3


def test_unknown_version_and_empty_registry_are_explained(client, tmp_path):
    with pytest.raises(PromotionError, match="has no version 7; it has 1, 2, 3"):
        promote(client, NAME, version=7)
    with pytest.raises(PromotionError, match="no versions: run `dvc repro` first"):
        promote(client, "other")
