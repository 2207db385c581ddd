"""MLflow tracking: one run spans the stages of one `dvc repro` or `dvc exp run`.

train starts the run and tags it with the hash of the weights it wrote; evaluate and export reopen the run
that trained models/model.pt by that tag (trained_run_id); the store is pipeline.tracking.store's. The train
stage and compare log a training through the same functions (log_run_params, log_plan, log_epoch). Metric names
are grouped by a `group/` prefix (train/, val/, test/, per_class/, model/, export/) so the MLflow UI's chart
sections stay readable; DVC's files keep their flat names.
"""

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pipeline.config import PARAMS_FILE, Params
from pipeline.data.manifest import class_names, split_sizes
from pipeline.finetune.records import EpochRecord
from pipeline.paths import MODEL_FILE, project_root
from pipeline.tracking import experiment_page
from pipeline.tracking.store import check_reachable, shown_uri, tracking_uri


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# MLflow 3's UI opens an experiment on what its kind tag says; without it, a new experiment opens on
# GenAI traces. "custom_model_development" ("Machine learning" in the UI) opens on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_TAGS = EXPERIMENT_KIND | experiment_page.view_tag()


def use_experiment(params: Params) -> None:
    """Point MLflow at the project's store and the data's experiment (Params.experiment), creating it if needed."""
    name = params.experiment()
    # a server keeps artifacts where it says; the environment cannot tell (set_tracking_uri exports the URI)
    local_store = tracking_uri().startswith("sqlite:")
    mlflow.set_tracking_uri(tracking_uri())
    if local_store and mlflow.get_experiment_by_name(name) is None:
        # MLflow would put artifacts under the current directory, which may be DVC's temporary copy.
        mlflow.create_experiment(name, artifact_location=(project_root() / "mlruns").as_uri(), tags=EXPERIMENT_TAGS)
    experiment = mlflow.set_experiment(name)
    if not EXPERIMENT_TAGS.items() <= experiment.tags.items():  # made elsewhere, or by an older version
        mlflow.set_experiment_tags(EXPERIMENT_TAGS)


def dvc_experiment() -> str:
    """The name of the `dvc exp run` this stage runs in (`dvc exp show` lists it so); empty under `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME", "")


def run_name(*what: str) -> str:
    """What ran, e.g. `partial · efficientnet_lite0`, then the DVC experiment's name."""
    experiment = dvc_experiment()
    return " · ".join([*what, experiment] if experiment else what)


@contextmanager
def start_run(params: Params, run_id: str | None = None):
    """A new run in the data's experiment, with the params, the git commit and the DVC experiment;
    or, given `run_id`, that run again (a training resumed from its checkpoint)."""
    use_experiment(params)
    if run_id:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    experiment = dvc_experiment()
    tags = {
        "git_commit": git_commit(),
        "strategy": params.finetune.strategy,
        "backbone": params.model.backbone,
        **({"dvc_experiment": experiment} if experiment else {}),
    }
    with mlflow.start_run(run_name=run_name(params.finetune.strategy, params.model.backbone), tags=tags) as run:
        log_run_params(params)
        if PARAMS_FILE.is_file():
            mlflow.log_artifact(str(PARAMS_FILE))
        yield run


def log_run_params(params: Params) -> None:
    """What decides a training's result, as flat `section.key` params (MLflow compares runs by them)."""
    mlflow.log_params(flatten(params.model_dump(mode="json", exclude={"serving", "compare", "verdict"})))


def log_dataset(source: str, rows: list[dict], manifest_sha256: str) -> None:
    """The prepared data as the run's MLflow dataset input (the runs table's Dataset column and filter):
    the manifest's rows, named after the data folder, digested by the manifest's hash, with the classes
    and split sizes as input tags."""
    import pandas as pd  # here: a second of import that only the train stage pays
    from mlflow.data.sources import LocalArtifactDatasetSource

    # Given as a path, the source is resolved by MLflow's registry, which holds this class twice and warns, at
    # every training, that the path "can be interpreted in multiple ways" (mlflow 3.17)
    dataset = mlflow.data.from_pandas(
        pd.DataFrame(rows),
        source=LocalArtifactDatasetSource(source),
        name=Path(source).name,
        digest=manifest_sha256[:16],
        targets="label",
    )
    tags = {
        "classes": ", ".join(class_names(rows)),
        **{f"{split}_images": str(count) for split, count in split_sizes(rows).items()},
    }
    mlflow.log_input(dataset, context="training", tags=tags)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """mlflow.log_metrics with 4 significant digits, which the UI's tables and charts show whole (MLflow
    would show 16); counts stay exact. DVC's files keep full precision."""
    mlflow.log_metrics({k: v if float(v).is_integer() else float(f"{v:.4g}") for k, v in metrics.items()}, step=step)


def log_plan(plan, trainable: int, total: int) -> None:
    """A `pipeline.finetune.strategies.Plan` and its parameter counts, on the active run."""
    log_metrics({"model/trainable_params": trainable, "model/total_params": total})
    choice = plan.block_choice
    if choice is not None:  # `auto`: what its probe measured, and the blocks it chose
        log_metrics({f"auto/rgn.{label}": value for label, value in choice.relative_gradient_norms.items()})
        log_metrics({"auto/probe_accuracy": choice.probe_accuracy})
        mlflow.set_tag("auto.blocks", ", ".join(choice.blocks) or "none (head only)")


def epoch_metric_name(key: str) -> str:
    """A training-history column as an MLflow metric: train_loss -> train/loss, lr -> train/lr."""
    group, _, name = key.partition("_")
    return f"{group}/{name}" if group in ("train", "val") else f"train/{key}"


def log_epoch(record: EpochRecord) -> None:
    metrics = {epoch_metric_name(k): v for k, v in asdict(record).items() if k not in ("epoch", "phase")}
    log_metrics(metrics, step=record.epoch)


def describe_run(text: str) -> None:
    """The active run's description: MLflow shows its note on the run page."""
    mlflow.set_tag("mlflow.note.content", text)


# Of models/model.pt, set by train on its run: how evaluate and export find that run. A file holding the run's id
# would be a DVC output whose content (a fresh id) changes with every training, and dvc.lock with it, so a fresh
# clone's `make run` could never leave git clean; and DVC's run cache restores a model without running train,
# which the hash still finds the run of.
WEIGHTS_TAG = "weights_sha256"


def weights_sha256(weights: Path = MODEL_FILE) -> str:
    with open(weights, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tag_weights(weights: Path = MODEL_FILE) -> None:
    mlflow.set_tag(WEIGHTS_TAG, weights_sha256(weights))


class NoTrainingRun(LookupError):
    pass


def trained_run_id(client: MlflowClient, weights: Path = MODEL_FILE) -> str:
    """The latest run tagged with the hash of `weights`: the one that trained them."""
    digest = weights_sha256(weights)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(
        experiments, f"tags.{WEIGHTS_TAG} = '{digest}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not found:
        raise NoTrainingRun(
            f"no MLflow run in {shown_uri()} trained {weights} (sha256 {digest[:12]}): "
            "run `dvc repro --force train` to train it again with its run"
        )
    return found[0].info.run_id


@contextmanager
def resume_run():
    """Reopen the run that trained the model in models/."""
    check_reachable()
    mlflow.set_tracking_uri(tracking_uri())
    try:
        run_id = trained_run_id(MlflowClient())
    except NoTrainingRun as exc:
        sys.exit(str(exc))
    with mlflow.start_run(run_id=run_id) as run:
        yield run
