"""The verdict's report as one typed object (reports/verdict/verdict.json), and what is made from it alone:
the lines the verdict stage prints (and the README shows), reports/verdict/verdict.md, and the gallery of the
images whose labels look wrong."""

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from pydantic import BaseModel, ConfigDict

from pipeline.atomic import atomic_path, write_json
from pipeline.choice.verdict_rule import Calibration, Scores, Verdict


class VerdictSetup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date: str
    git_commit: str
    run_id: str
    data_source: str
    images: int  # train + val, scored
    classes: int
    image_size: int
    epochs: int  # of the training it is asked about
    backbone: str
    weights: str
    folds: int
    knn_neighbors: int
    worth_it: float
    shift_threshold: float
    gallery_file: str
    seconds: float


class LabelIssue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    given: str
    predicted: str
    given_probability: float  # the probe's, out of fold


class VerdictReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    setup: VerdictSetup
    verdict: Verdict
    scores: Scores
    calibration: Calibration
    label_issue_count: int
    label_issues: list[LabelIssue]  # the most suspicious, for the gallery

    @classmethod
    def read(cls, path: Path) -> "VerdictReport":
        return cls.model_validate(json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def summary_lines(report: VerdictReport) -> list[str]:
    verdict, scores, calibration = report.verdict, report.scores, report.calibration
    setup = report.setup
    to_set = f"finetune.strategy: {verdict.strategy}" + (
        f", finetune.unfreeze_blocks: {verdict.unfreeze_blocks}" if verdict.unfreeze_blocks else ""
    )
    multi_gain = 100 * (scores.multi_depth_accuracy - scores.probe_accuracy)
    cases = len(calibration.cases)
    return [
        f"Verdict: {verdict.decision} (set {to_set}); {verdict.certainty}, {percent(verdict.confidence)}.",
        f"Expected gain of fine-tuning over the head: {verdict.expected_gain:+.1f} ± {calibration.gain_sd:.1f} "
        f"accuracy points (worth it from {setup.worth_it:.1f}).",
        f"Linear probe {scores.probe_accuracy:.3f}, kNN {scores.knn_accuracy:.3f}, LogME {scores.logme:.3f} "
        f"({setup.images:,} train + val images at {setup.image_size} px, {setup.folds}-fold).",
        f"Every block's features together: {scores.multi_depth_accuracy:.3f} ({multi_gain:+.1f} points over "
        "the last layer's)" + (": the top of the network has more to give." if multi_gain >= setup.worth_it else "."),
        shift_line(report),
        f"Label issues: {report.label_issue_count:,} images ({100 * scores.label_issue_rate:.1f}%) look "
        f"mislabelled: {setup.gallery_file}.",
        f"Calibration, each of {cases} measured comparisons left out of the fit in turn: its strategy within the "
        f'seeds\' spread of the best in {calibration.agreement}, the same answer to "is the head enough?" in '
        f"{calibration.head_enough_agreement}, gain off by {calibration.gain_sd:.1f} points (root mean square).",
        f"{setup.seconds:.0f} s, decoding included.",
    ]


def shift_line(report: VerdictReport) -> str:
    shifts, blocks = report.scores.batchnorm_shift, report.verdict.blocks
    tune_from = f"tune from {blocks[0] if blocks else 'none'}."
    if not shifts:
        return f"No BatchNorm layer in {report.setup.backbone}: no statistics shift to measure; {tune_from}"
    first_block, first_shift = next(iter(shifts.items()))
    return f"BatchNorm shift at the first block ({first_block}): {first_shift:.2f} std; {tune_from}"


def markdown(report: VerdictReport) -> str:
    setup = report.setup
    lines = [
        "# Is the head enough? The verdict",
        "",
        f"{setup.date}, git {setup.git_commit[:7]}, MLflow run `{setup.run_id}`. Data "
        f"`{setup.data_source}`: {setup.images:,} train + val images (the test split is not read), "
        f"{setup.classes} classes, at {setup.image_size} px; backbone `{setup.backbone}` "
        f"({setup.weights}), for a training of {setup.epochs} epochs. One pass of the frozen backbone, "
        f"{setup.seconds:.0f} s with decoding. Reproduce: `dvc repro verdict`; apply: "
        "`python -m pipeline.commands.apply verdict`.",
        "",
        "## Verdict",
        "",
        *(f"- {line}" for line in summary_lines(report)),
        "",
        *score_lines(report),
        *calibration_lines(report),
        *label_lines(report),
    ]
    return "\n".join(lines) + "\n"


def score_lines(report: VerdictReport) -> list[str]:
    setup, verdict, scores = report.setup, report.verdict, report.scores
    return [
        "## Scores",
        "",
        "| score | value | what it says |",
        "|---|---|---|",
        f"| linear probe accuracy | {scores.probe_accuracy:.4f} | the head alone, {setup.folds}-fold on train + val |",
        f"| kNN accuracy (k = {setup.knn_neighbors}) | {scores.knn_accuracy:.4f} | how well neighbours in "
        "feature space share labels |",
        f"| LogME | {scores.logme:.4f} | evidence of a linear model on the features, per image (You et al. 2021) |",
        f"| multi-depth probe accuracy | {scores.multi_depth_accuracy:.4f} | every block's pooled features "
        "(Head2Toe): above the probe, the top blocks need adapting |",
        f"| label issue rate | {scores.label_issue_rate:.4f} | images cleanlab flags on the probe's "
        "out-of-fold probabilities |",
        "",
        "| block | BatchNorm shift (std) | tuned |",
        "|---|---|---|",
        *(
            f"| `{block}` | {shift:.2f} | {'yes' if block in verdict.blocks else ''} |"
            for block, shift in scores.batchnorm_shift.items()
        ),
        "",
    ]


def calibration_lines(report: VerdictReport) -> list[str]:
    setup, calibration = report.setup, report.calibration
    return [
        "## Calibration",
        "",
        f"The rule (pipeline/choice/verdict_rule.py) expects fine-tuning to win back {calibration.recovery:.2f} of the "
        f"probe's error that is not wrong labels, fitted on {', '.join(f'`{r}`' for r in calibration.fitted_on)} "
        f"(the comparisons nearest {setup.epochs} epochs). Against every measured comparison in "
        "`reports/verdict/calibration.csv`: left out of the fit, its strategy is within the seeds' spread of the "
        f'best in {calibration.agreement} of {len(calibration.cases)} cases, it answers "is the head '
        f'enough?" as the measured gain (below {setup.worth_it:.1f} points or not) does in '
        f"{calibration.head_enough_agreement}, and its gain is off by "
        f"{calibration.gain_sd:.1f} points (root mean square); fitted on all, {calibration.agreement_in_sample} "
        f"of {len(calibration.cases)} and {calibration.gain_error_in_sample:.1f} points.",
        "",
        "| comparison | data | epochs | px | measured best | within spread | measured gain | verdict (left out) "
        "| predicted gain (left out) | strategy agrees | head enough: measured / verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| `{case.report}` | `{case.data_source}` | {case.epochs} | {case.image_size} | "
            f"`{case.measured_best_strategy}` | {', '.join(case.measured_within_spread)} | "
            f"{case.measured_gain:+.1f} | `{case.held_out_strategy}` | {case.held_out_gain:+.1f} | "
            f"{'yes' if case.held_out_agrees else '**no**'} | "
            f"{yes_no(case.measured_head_enough)} / {yes_no(case.held_out_head_enough)} |"
            for case in calibration.cases
        ),
        "",
    ]


def label_lines(report: VerdictReport) -> list[str]:
    return [
        "## Labels to check",
        "",
        f"The {len(report.label_issues)} most suspicious of {report.label_issue_count} flagged images "
        "(lowest probability of their given label), in `label_issues.png`:",
        "",
        "![images whose label the probe doubts](label_issues.png)",
        "",
        "| image | given label | probe says | probability of the given label |",
        "|---|---|---|---|",
        *(
            f"| `{issue.path}` | {issue.given} | {issue.predicted} | {issue.given_probability:.3f} |"
            for issue in report.label_issues
        ),
    ]


def gallery(images: list[np.ndarray], captions: list[str], path: Path) -> None:
    """A grid of images (H x W x 3 uint8) with a caption each; a note instead when there are none."""
    columns = min(4, max(1, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no label issues found", ha="center", va="center")
    fig.suptitle("Labels the frozen features' probe doubts most")
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=100)
    plt.close(fig)
