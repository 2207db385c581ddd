"""A trained model's scores on the test split: accuracy, macro-F1, calibration error, per-class precision and
recall, the confusion matrix and the run's one-paragraph description (pipeline.stages.evaluate writes them)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import torch
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, f1_score, precision_recall_fscore_support

from pipeline.atomic import atomic_path
from pipeline.data.manifest import split_sizes
from pipeline.model.card import ModelCard

# McNemar's exact test on two models' predictions of the same images: k images where they disagree, all won by
# the same model, give a two-sided p-value of 2 * 0.5**k, under 5% only from k = 6. So on n test images, models
# whose accuracies differ by less than 6 / n are never told apart.
FEWEST_DISAGREEMENTS = math.ceil(math.log2(2 / 0.05))
# a split that cannot tell 5 accuracy points apart cannot rank strategies, which mostly differ by fewer
RANKS_STRATEGIES = 0.05


def smallest_detectable_difference(test_images: int) -> float:
    """The smallest accuracy difference between two models a paired test at 5% can find on `test_images`."""
    return min(1.0, FEWEST_DISAGREEMENTS / max(test_images, 1))


def small_test_split_warning(test_images: int) -> str | None:
    """What a test split too small to rank strategies is worth, in words; None when it can."""
    difference = smallest_detectable_difference(test_images)
    if difference <= RANKS_STRATEGIES:
        return None
    return (
        f"the test split's {test_images} images tell two strategies apart only when their accuracies differ by "
        f"{100 * difference:.0f} points or more (a paired test at 5%): add images or raise data.test_fraction"
    )


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).float()
    bin_index = torch.clamp((confidence * bins).long(), max=bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = bin_index == b
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item())
    return ece


def score(probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    predicted = probabilities.argmax(1).numpy()
    precision, recall, _, _ = precision_recall_fscore_support(
        labels.numpy(), predicted, labels=range(len(classes)), zero_division=0
    )
    return {
        "accuracy": accuracy_score(labels.numpy(), predicted),
        "macro_f1": f1_score(labels.numpy(), predicted, average="macro", labels=range(len(classes)), zero_division=0),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": {
            c: {"precision": float(p), "recall": float(r)} for c, p, r in zip(classes, precision, recall, strict=True)
        },
    }


def confusion_figure(labels, predicted, classes: list[str]) -> plt.Figure:
    """Actual classes down, predicted across, named as in dvc.yaml's interactive confusion plot (x: predicted)."""
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=range(len(classes)), display_labels=classes, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set(title="Test split", xlabel="predicted", ylabel="actual")
    fig.tight_layout()
    return fig


def plot_confusion(labels, predicted, classes: list[str], path: Path) -> None:
    fig = confusion_figure(labels, predicted, classes)
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=100)
    plt.close(fig)


def description(card: ModelCard, rows: list[dict], run_metrics: dict, test_accuracy: float) -> str:
    """The run in one paragraph, for MLflow's run page: data, strategy, what was trained, time, result."""
    sizes = split_sizes(rows)
    trained_part = (
        f"{run_metrics['model/trainable_params']:,.0f} of {run_metrics['model/total_params']:,.0f} parameters "
        f"trained in {run_metrics['train/seconds']:.0f} s"
        if "train/seconds" in run_metrics
        else "trained"
    )
    chosen = "" if card.strategy_chosen_by == "params.yaml" else f" (chosen by {card.strategy_chosen_by})"
    return (
        f"`{card.strategy}`{chosen} fine-tuning of {card.backbone} ({card.weights} weights) on {card.data_source}: "
        f"{len(card.classes)} classes ({', '.join(card.classes)}), {sizes['train']} train, {sizes['val']} "
        f"validation and {sizes['test']} test images at {card.image_size} px (manifest "
        f"{card.data_fingerprint[:12]}). {trained_part}; test accuracy {test_accuracy:.4f}."
        + (f" **Warning: {warning}.**" if (warning := small_test_split_warning(sizes["test"])) else "")
    )
