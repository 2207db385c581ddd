"""The runs of a strategy comparison: each a training through the pipeline's own entry point
(pipeline.finetune.loop.train_model) as a child of the comparison's MLflow run, scored on the test split and on
its shifted copy. What the grid and halving share."""

import time
from dataclasses import dataclass

import mlflow
import torch

from pipeline.choice.compare_report import RANDOM_INIT_PROBE, Result
from pipeline.config import Params, parse_params
from pipeline.data import corruptions
from pipeline.data.splits import Split
from pipeline.finetune.loop import Callbacks, Trained, train_model
from pipeline.finetune.phase import body_as_built
from pipeline.model import model_file
from pipeline.model.features import FrozenFeatures
from pipeline.tracking import runs


def run_params(
    params: Params, strategy: str, seed: int, weights: str | None = None, epochs: int | None = None
) -> Params:
    """params.yaml with the comparison's budget (or a halving rung's `epochs`), the strategy and the seed of a run."""
    raw = params.model_dump(mode="json")
    budget = params.compare
    raw["seed"] = seed
    raw["finetune"] |= {"strategy": strategy, "head_epochs": budget.head_epochs}
    raw["train"] |= {"epochs": epochs or budget.epochs, "image_size": budget.image_size}
    if weights is not None:
        raw["model"]["weights"] = weights
    return parse_params(raw, "compare")


@dataclass
class TestSplits:
    """The test split and its shifted copy (the same images, each corrupted once; pipeline.data.corruptions)."""

    clean: Split
    shifted: torch.Tensor
    corruptions: torch.Tensor  # index into corruptions.CORRUPTIONS, per image


@dataclass
class Shared:
    """What every run of one comparison shares."""

    classes: list[str]
    data: str  # the prepared data's fingerprint
    commit: str
    frozen: FrozenFeatures  # the pretrained body's features, passed once for all runs


@dataclass
class Trial:
    """One trained run, before it is scored on test: what halving keeps between its training and its decision."""

    label: str
    params: Params
    trained: Trained
    seconds: float
    run_id: str


def run_labels(params: Params, strategies: list[str]) -> list[tuple[str, str]]:
    """(label, weights) of each strategy's runs, plus the random-init probe when asked for."""
    labelled = [(strategy, params.model.weights) for strategy in strategies]
    if params.compare.random_init_probe and params.model.weights.lower() != "none":
        labelled.append((RANDOM_INIT_PROBE, "none"))
    return labelled


def strategy_of(label: str) -> str:
    return "head" if label == RANDOM_INIT_PROBE else label


@torch.no_grad()
def predicted(trial: Trial, images: torch.Tensor, frozen: FrozenFeatures) -> torch.Tensor:
    """The class the trial's best epoch gives each image. A body that did not train is the one every run of
    the comparison built, so its features of `images` are passed once for all such runs (`frozen`)."""
    model = trial.trained.model
    if body_as_built(trial.params, trial.trained.plan):
        return model.head(frozen(trial.params, model, images, torch.device("cpu"))).argmax(1)
    return model_file.predict_probabilities(model, images).argmax(1)


def train_run(params: Params, label: str, train: Split, val: Split, shared: Shared, **tags: str) -> Trial:
    """One child run of the active MLflow run: train with `params` through the pipeline's own entry point."""
    tags = {"strategy": label, "seed": str(params.seed), "git_commit": shared.commit, **tags}
    with mlflow.start_run(run_name=f"{label} seed {params.seed}", nested=True, tags=tags) as run:
        runs.log_run_params(params)
        callbacks = Callbacks(on_plan=runs.log_plan, on_epoch=runs.log_epoch)
        started = time.perf_counter()
        result = train_model(params, shared.classes, train, val, shared.data, callbacks, frozen=shared.frozen)
        seconds = time.perf_counter() - started
        runs.log_metrics({"val/best_accuracy": result.best.val_accuracy, "train/seconds": seconds})
    return Trial(label, params, result, seconds, run.info.run_id)


def scored(trial: Trial, test: TestSplits, frozen: FrozenFeatures) -> Result:
    """The trial's best epoch on the test split and its shifted copy, logged on its run."""
    accuracy = (predicted(trial, test.clean.images, frozen) == test.clean.labels).float().mean().item()
    shifted = corruptions.accuracies(predicted(trial, test.shifted, frozen), test.clean.labels, test.corruptions)
    with mlflow.start_run(run_id=trial.run_id, nested=True):
        runs.log_metrics(
            {"test/accuracy": accuracy, **{f"shifted/{k.replace(' ', '_')}": v for k, v in shifted.items()}}
        )
    print(
        f"{trial.label:>20} seed {trial.params.seed}: test accuracy {accuracy:.4f} (shifted {shifted['all']:.4f}), "
        f"{trial.trained.trainable_params:,} trained, {trial.seconds:.0f} s"
    )
    return Result(
        strategy=trial.label,
        seed=trial.params.seed,
        test_accuracy=accuracy,
        best_val_accuracy=trial.trained.best.val_accuracy,
        train_seconds=trial.seconds,
        trainable_params=trial.trained.trainable_params,
        run_id=trial.run_id,
        shifted_accuracy=shifted,
    )


def validation_correct(trials: list[Trial], val: Split) -> torch.Tensor:
    """Seeds x images: whether each run's best epoch classified each validation image right, as its training saw."""
    return torch.stack([trial.trained.val_predicted == val.labels for trial in trials])
