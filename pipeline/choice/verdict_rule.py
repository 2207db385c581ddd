"""The verdict's rule: from what one pass of the frozen backbone measures, the expected gain of fine-tuning over
training the head alone, whether it is worth it, where to tune, and how sure that is.

The gain is a linear function of scores of the data (`FEATURES`); which scores it uses is chosen among nested
candidates (`RULES`) by their error on calibration families left out of the fit (pipeline.choice.rule_validation),
the simplest within one standard error of the best. The cases it is fitted on are measured comparisons listed in
reports/calibration/cases.yaml, scored into reports/verdict/calibration.jsonl (`python -m pipeline.commands.calibrate`).
How the rule was chosen and how it fares: docs/strategies.md#is-the-head-enough-the-verdict.
"""

import math
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.atomic import atomic_path
from pipeline.config import ConfigError


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scores(Record):
    """What one pass of the frozen backbone says about the data (pipeline.choice.assessment)."""

    images: int  # train + val images scored
    images_per_class: float  # training images per class (the mean)
    probe_accuracy: float  # linear probe on the last layer's features, cross-validated
    knn_accuracy: float
    logme: float
    multi_depth_accuracy: float  # linear probe on every block's pooled features (Head2Toe)
    block_probe_accuracy: dict[str, float] = {}  # per block without BatchNorm: a probe on its pooled output alone
    label_issue_rate: float  # share of images cleanlab flags as likely mislabelled
    wrong_label_rate: float = 0.0  # the share of those the label check found to be wrong (pipeline.choice.label_check)
    batchnorm_shift: dict[str, float]  # per block with BatchNorm, input to output (pipeline.choice.batchnorm_shift)

    def with_wrong_labels(self, precision: float) -> "Scores":
        """The flagged share taken for wrong labels as far as the label check found flags right (`precision`)."""
        return self.model_copy(update={"wrong_label_rate": self.label_issue_rate * precision})


class Case(Record):
    """One row of calibration.jsonl: the verdict's scores on a comparison's data and budget, and what the comparison
    measured (accuracies in [0, 1], gains in points)."""

    name: str
    family: str  # the data it comes from: a family's cases are left out of the fit together
    data: str  # the data itself: a built-in set or a folder, and the transform made of it
    report: str
    backbone: str
    weights: str
    image_size: int
    epochs: int
    train_per_class: int
    scores: Scores
    measured: dict[str, float]  # strategy -> mean test accuracy over the seeds
    measured_best: str  # the most accurate on validation (pipeline.choice.comparison_rule)
    measured_within_spread: list[str]  # strategies the seeds cannot tell from the best, on validation

    @property
    def setting(self) -> tuple:
        """What makes two cases the same comparison: one would sit in the other's fit (a twin)."""
        return (self.data, self.backbone, self.weights, self.image_size, self.epochs, self.train_per_class)

    @property
    def gain(self) -> float:
        """Points the best fine-tuning strategy adds over the head, on the test split."""
        tuned = max(value for strategy, value in self.measured.items() if strategy != "head")
        return 100 * (tuned - self.measured["head"])


def write_cases(path: Path, cases: list[Case]) -> None:
    """One JSON object per line: typed rows a spreadsheet need not read, a diff shows case by case."""
    with atomic_path(path) as partial:
        partial.write_text("".join(case.model_dump_json() + "\n" for case in cases))


def read_cases(path: Path) -> list[Case]:
    if not path.is_file():
        raise ConfigError(f"{path} not found: `python -m pipeline.commands.calibrate` writes it")
    return [Case.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


# The scores a rule may use, in points where they are accuracies; each a function of the scores and the budget.
FEATURES: dict[str, Callable[[Scores, int], float]] = {
    "1": lambda s, epochs: 1.0,
    # the probe's error that is not wrong labels: a gain that only fits wrong labels is no gain
    "probe error": lambda s, epochs: 100 * max(0.0, 1 - s.probe_accuracy - s.wrong_label_rate),
    "kNN below probe": lambda s, epochs: 100 * (s.probe_accuracy - s.knn_accuracy),
    "multi-depth gain": lambda s, epochs: 100 * (s.multi_depth_accuracy - s.probe_accuracy),
    "LogME": lambda s, epochs: s.logme,
    "log2 images per class": lambda s, epochs: math.log2(max(s.images_per_class, 1.0)),
    "epochs": lambda s, epochs: float(epochs),
}
# Candidate rules, simplest first: the scores each uses. "probe error" through the origin is the old rule.
RULES: dict[str, tuple[str, ...]] = {
    "probe error": ("probe error",),
    "probe error + intercept": ("1", "probe error"),
    "+ kNN gap": ("1", "probe error", "kNN below probe"),
    "+ multi-depth gain": ("1", "probe error", "kNN below probe", "multi-depth gain"),
    "+ LogME": ("1", "probe error", "kNN below probe", "multi-depth gain", "LogME"),
    "+ images per class and budget": (
        "1",
        "probe error",
        "kNN below probe",
        "multi-depth gain",
        "LogME",
        "log2 images per class",
        "epochs",
    ),
}


def feature_row(names: tuple[str, ...], scores: Scores, epochs: int) -> np.ndarray:
    return np.array([FEATURES[name](scores, epochs) for name in names])


class FittedRule(Record):
    name: str
    features: tuple[str, ...]
    weights: tuple[float, ...]  # least squares, one per feature
    gain_sd: float  # points: root mean square of its errors on families left out of the fit

    def gain(self, scores: Scores, epochs: int) -> float:
        return float(feature_row(self.features, scores, epochs) @ np.array(self.weights))


def fit(name: str, cases: list[Case], gain_sd: float = 0.0) -> FittedRule:
    """Least squares of the measured gain on the rule's features over `cases`."""
    features = RULES[name]
    design = np.stack([feature_row(features, case.scores, case.epochs) for case in cases])
    target = np.array([case.gain for case in cases])
    weights, *_ = np.linalg.lstsq(design, target, rcond=None)
    return FittedRule(name=name, features=features, weights=tuple(float(w) for w in weights), gain_sd=gain_sd)


def head_enough_probability(gain: float, sd: float, worth_it: float) -> float:
    """P(the true gain is below worth_it), taking the rule's error as normal with the held-out spread."""
    return statistics.NormalDist(gain, max(sd, 1e-6)).cdf(worth_it)


def certainty_of(confidence: float) -> str:
    return "sure" if confidence >= 0.9 else "fairly sure" if confidence >= 0.7 else "unsure"
