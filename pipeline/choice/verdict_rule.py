"""The verdict's rule, and its calibration against measured strategy comparisons.

reports/verdict/calibration.csv holds one row per committed comparison (`make compare`): the verdict's
scores on that comparison's data and budget (`python -m pipeline.commands.calibrate` recomputes them)
beside what the comparison measured. The rule has one fitted number and two set by hand:

1. Whether: the expected gain of fine-tuning over the head is `recovery` x the probe's recoverable error,
   in accuracy points: 1 - cross-validated probe accuracy - the estimated share of wrong labels (a gain
   that only fits wrong labels is no gain). `recovery`, the share of that error fine-tuning wins back, is
   the one fitted number: least squares through the origin on the calibration rows whose comparison
   trained for the number of epochs nearest the run's `train.epochs` (the gain grows with the budget).
   Below `verdict.worth_it` points: the head is enough.
2. Where: the blocks from the first whose BatchNorm inputs are shifted by `verdict.shift_threshold`
   standard deviations or more, to the output (their statistics differ from pretraining, which the head
   cannot undo); if none is, the last block (a shift of the labels only: Lee et al. 2023 tune the last
   layer for it). All of them: fine-tune everything (`full`); fewer: `partial` with that many blocks.
   Every calibration case so far is shifted from its first block, so this branch is set by hand, not
   calibrated; on patches of scikit-learn's two sample photos the first block's shift is about a third
   of the default threshold.
3. How sure: the probability that the gain falls on the verdict's side of `worth_it`, taking the error
   of the gain as normal with the spread of the leave-one-out errors over the calibration rows.
"""

import csv
import math
import statistics
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipeline.atomic import atomic_path
from pipeline.config import ConfigError

HEAD_IS_ENOUGH = "the head is enough"
EVERYTHING = "fine-tune everything"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scores(Record):
    """What one pass of the frozen backbone says about the data (pipeline.choice.transferability)."""

    images: int  # train + val images scored
    probe_accuracy: float  # linear probe on the last layer's features, cross-validated
    knn_accuracy: float
    logme: float
    multi_depth_accuracy: float  # linear probe on every block's pooled features (Head2Toe)
    label_issue_rate: float  # share of images cleanlab flags as likely mislabelled
    batchnorm_shift: dict[str, float]  # per block, input to output (pipeline.choice.batchnorm_shift)


class Case(Record):
    """One row of calibration.csv: the verdict's scores on a comparison's data and budget, and what the
    comparison measured (accuracies in [0, 1], gains in points)."""

    report: str
    data_source: str
    backbone: str
    image_size: int
    train_per_class: int
    epochs: int
    images: int
    probe_accuracy: float
    knn_accuracy: float
    logme: float
    multi_depth_accuracy: float
    label_issue_rate: float
    batchnorm_shift: str  # "block=shift block=shift ...", input to output
    measured_head: float
    measured_best_strategy: str
    measured_best: float
    measured_gain: float  # best strategy's mean - head's mean, in points
    measured_recommended: str  # the comparison's recommendation (pipeline.choice.compare_report.recommended)
    measured_within_spread: str  # strategies within the seeds' spread of the best, space-separated

    def shifts(self) -> dict[str, float]:
        return {block: float(value) for block, value in (item.split("=") for item in self.batchnorm_shift.split())}


def shift_text(shifts: dict[str, float]) -> str:
    return " ".join(f"{block}={value:.3f}" for block, value in shifts.items())


def write_cases(path: Path, cases: list[Case]) -> None:
    with atomic_path(path) as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, list(Case.model_fields))
        writer.writeheader()
        writer.writerows(case.model_dump() for case in cases)


def read_cases(path: Path) -> list[Case]:
    if not path.is_file():
        raise ConfigError(f"{path} not found: `python -m pipeline.commands.calibrate` writes it")
    with open(path, newline="") as f:
        return [Case.model_validate(row) for row in csv.DictReader(f)]


def recoverable_error(probe_accuracy: float, label_issue_rate: float) -> float:
    """Points of the probe's error that are not wrong labels: what fine-tuning could win back."""
    return 100 * max(0.0, 1 - probe_accuracy - label_issue_rate)


def budget_cases(cases: list[Case], epochs: int) -> list[Case]:
    """The cases whose comparison trained for the number of epochs nearest `epochs`."""
    nearest = min(abs(case.epochs - epochs) for case in cases)
    return [case for case in cases if abs(case.epochs - epochs) == nearest]


def fit_recovery(cases: list[Case]) -> float:
    """Least squares through the origin of the measured gain on the recoverable error."""
    errors = [recoverable_error(case.probe_accuracy, case.label_issue_rate) for case in cases]
    total = sum(error**2 for error in errors)
    if not cases or total == 0:
        raise ConfigError("calibration: no case with a probe error to fit the rule on; run --calibrate")
    return sum(error * case.measured_gain for error, case in zip(errors, cases, strict=True)) / total


class CaseVerdict(Record):
    """How the rule fared on one calibration case: fitted with it (in sample) and without it (held out)."""

    report: str
    data_source: str
    epochs: int
    image_size: int
    train_per_class: int
    measured_recommended: str
    measured_best_strategy: str
    measured_within_spread: list[str]
    measured_gain: float
    measured_head_enough: bool
    in_sample_strategy: str
    in_sample_gain: float
    in_sample_agrees: bool  # its strategy is within the seeds' spread of the best
    in_sample_head_enough: bool
    held_out_strategy: str
    held_out_gain: float
    held_out_agrees: bool
    held_out_head_enough: bool


class Calibration(Record):
    recovery: float  # the fitted number of the rule for this budget
    fitted_on: list[str]  # the reports it was fitted on
    gain_sd: float  # points: root mean square of the leave-one-out errors of the gain, over all cases
    cases: list[CaseVerdict]
    agreement: int  # cases whose verdict (fitted without them) is within the seeds' spread of the best
    agreement_in_sample: int
    head_enough_agreement: int  # cases where it says "the head is enough" exactly when the gain was < worth_it
    gain_error_in_sample: float  # root mean square, points


class Verdict(Record):
    decision: str  # HEAD_IS_ENOUGH, "fine-tune the last N blocks" or EVERYTHING
    strategy: str  # a name of pipeline.finetune.strategies.STRATEGIES
    unfreeze_blocks: int | None  # partial's finetune.unfreeze_blocks
    blocks: list[str]  # the blocks to tune, input to output
    expected_gain: float  # points over the head
    confidence: float  # probability that the gain is on the decided side of worth_it
    certainty: str  # sure, fairly sure, unsure


def decide(
    probe_accuracy: float,
    label_issue_rate: float,
    shifts: dict[str, float],
    recovery: float,
    gain_sd: float,
    worth_it: float,
    shift_threshold: float,
) -> Verdict:
    gain = recovery * recoverable_error(probe_accuracy, label_issue_rate)
    fine_tune_pays = statistics.NormalDist().cdf((gain - worth_it) / gain_sd)
    confidence = fine_tune_pays if gain >= worth_it else 1 - fine_tune_pays
    certainty = "sure" if confidence >= 0.9 else "fairly sure" if confidence >= 0.7 else "unsure"
    sure = {"expected_gain": gain, "confidence": confidence, "certainty": certainty}
    if gain < worth_it:
        return Verdict(decision=HEAD_IS_ENOUGH, strategy="head", unfreeze_blocks=None, blocks=[], **sure)
    blocks = list(shifts)
    shifted = [index for index, value in enumerate(shifts.values()) if value >= shift_threshold]
    tuned = blocks[shifted[0] :] if shifted else blocks[-1:]
    if len(tuned) == len(blocks):
        return Verdict(decision=EVERYTHING, strategy="full", unfreeze_blocks=None, blocks=tuned, **sure)
    decision = f"fine-tune the last {len(tuned)} block" + ("s" if len(tuned) > 1 else "")
    return Verdict(decision=decision, strategy="partial", unfreeze_blocks=len(tuned), blocks=tuned, **sure)


def root_mean_square(values: list[float]) -> float:
    return math.sqrt(statistics.fmean(value**2 for value in values))


def case_verdict(case: Case, in_sample: Verdict, held_out: Verdict, worth_it: float) -> CaseVerdict:
    within = case.measured_within_spread.split()
    return CaseVerdict(
        report=case.report,
        data_source=case.data_source,
        epochs=case.epochs,
        image_size=case.image_size,
        train_per_class=case.train_per_class,
        measured_recommended=case.measured_recommended,
        measured_best_strategy=case.measured_best_strategy,
        measured_within_spread=within,
        measured_gain=case.measured_gain,
        measured_head_enough=case.measured_gain < worth_it,
        in_sample_strategy=in_sample.strategy,
        in_sample_gain=in_sample.expected_gain,
        in_sample_agrees=in_sample.strategy in within,
        in_sample_head_enough=in_sample.strategy == "head",
        held_out_strategy=held_out.strategy,
        held_out_gain=held_out.expected_gain,
        held_out_agrees=held_out.strategy in within,
        held_out_head_enough=held_out.strategy == "head",
    )


def calibrate(cases: list[Case], epochs: int, worth_it: float, shift_threshold: float) -> Calibration:
    """The rule for a run of `epochs`, and how it fared on every case: fitted with the case (in sample) and
    without it (leave-one-out: the case is new to the rule, as the user's data is)."""
    if len(cases) < 2:
        raise ConfigError("calibration: at least two cases are needed; run `python -m pipeline.commands.calibrate`")
    fitted = budget_cases(cases, epochs)
    leave_one_out = {}
    for case in cases:
        others = [other for other in budget_cases(cases, case.epochs) if other is not case]
        leave_one_out[case.report] = fit_recovery(others or [other for other in cases if other is not case])
    held_out_errors = [
        leave_one_out[case.report] * recoverable_error(case.probe_accuracy, case.label_issue_rate) - case.measured_gain
        for case in cases
    ]
    gain_sd = root_mean_square(held_out_errors)

    def verdict_of(case: Case, recovery: float) -> Verdict:
        return decide(
            case.probe_accuracy, case.label_issue_rate, case.shifts(), recovery, gain_sd, worth_it, shift_threshold
        )

    rows, in_sample_errors = [], []
    for case in cases:
        in_sample = verdict_of(case, fit_recovery(budget_cases(cases, case.epochs)))
        rows.append(case_verdict(case, in_sample, verdict_of(case, leave_one_out[case.report]), worth_it))
        in_sample_errors.append(in_sample.expected_gain - case.measured_gain)
    return Calibration(
        recovery=fit_recovery(fitted),
        fitted_on=[case.report for case in fitted],
        gain_sd=gain_sd,
        cases=rows,
        agreement=sum(row.held_out_agrees for row in rows),
        agreement_in_sample=sum(row.in_sample_agrees for row in rows),
        head_enough_agreement=sum(row.held_out_head_enough == row.measured_head_enough for row in rows),
        gain_error_in_sample=root_mean_square(in_sample_errors),
    )
