"""The link `make ui` prints: the MLflow runs of params.yaml's dataset, sorted by test accuracy, with the strategy,
test accuracy, trained parameters and seconds as columns (pipeline.tracking.experiment_page's saved view).

    python -m pipeline.commands.ui_link [--url http://127.0.0.1:5000]
"""

import argparse

from mlflow import MlflowClient

from pipeline.config import load_params
from pipeline.tracking import store
from pipeline.tracking.experiment_page import runs_link
from pipeline.tracking.runs import EXPERIMENT_TAGS


def link(base_url: str) -> str:
    """The runs of the current dataset's experiment; the experiments list while it has none."""
    name = load_params().experiment()
    client = MlflowClient(store.tracking_uri())
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return f"no runs on `{name}` yet: {base_url.rstrip('/')}/#/experiments?workflowType=machine_learning"
    for key, value in EXPERIMENT_TAGS.items():  # an experiment made by an older version lacks the view
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return f"runs on `{name}`, best test accuracy first: {runs_link(base_url, experiment.experiment_id)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="where `mlflow ui` listens")
    print(link(parser.parse_args(argv).url))


if __name__ == "__main__":
    main()
