"""The verdict's report as one typed object (reports/verdict/verdict.json), and what is made from it alone: the
lines the verdict stage prints (and the README shows), reports/verdict/verdict.md, and the gallery of the images
whose labels look wrong."""

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from pydantic import BaseModel, ConfigDict

from pipeline.atomic import atomic_path, write_json
from pipeline.choice.decision import HEAD_IS_ENOUGH, Verdict
from pipeline.choice.label_check import LabelCheckRow
from pipeline.choice.rule_validation import Validation
from pipeline.choice.verdict_rule import FittedRule, Scores
from pipeline.model.scoring import small_test_split_warning


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VerdictSetup(Frozen):
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
    test_images: int | None = None  # the split a comparison after the verdict is judged on; not in older reports


class LabelIssue(Frozen):
    path: str
    given: str
    predicted: str
    given_probability: float  # the probe's, out of fold


class VerdictReport(Frozen):
    setup: VerdictSetup
    verdict: Verdict
    scores: Scores
    rule: FittedRule  # fitted on every calibration case
    validation: Validation  # how the candidate rules fared on families left out
    label_check: list[LabelCheckRow]
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


def to_set(verdict: Verdict) -> str:
    return f"finetune.strategy: {verdict.strategy}" + (
        f", finetune.unfreeze_blocks: {verdict.unfreeze_blocks}" if verdict.unfreeze_blocks else ""
    )


def summary_lines(report: VerdictReport) -> list[str]:
    verdict, scores, setup, validation = report.verdict, report.scores, report.setup, report.validation
    chosen = validation.chosen_score
    lines = [
        f"Verdict: {verdict.decision} (set {to_set(verdict)}); {verdict.certainty}, {percent(verdict.confidence)}.",
        f"Expected gain of fine-tuning over the head: {verdict.expected_gain:+.1f} ± {verdict.gain_sd:.1f} "
        f"accuracy points (worth it from {setup.worth_it:.1f}), from {' + '.join(report.rule.features)}.",
        f"Linear probe {scores.probe_accuracy:.3f}, kNN {scores.knn_accuracy:.3f}, LogME {scores.logme:.3f}, every "
        f"block together {scores.multi_depth_accuracy:.3f} ({setup.images:,} train + val images at "
        f"{setup.image_size} px, {scores.images_per_class:.0f} a class, {setup.folds}-fold).",
    ]
    if verdict.decision != HEAD_IS_ENOUGH:
        lines.append(f"Where: {verdict.where}; tune from {verdict.blocks[0]}.")
    lines += [
        f"Label issues: {report.label_issue_count:,} images ({100 * scores.label_issue_rate:.1f}%) flagged, "
        f"{100 * scores.wrong_label_rate:.1f}% taken for wrong labels (the label check's share): {setup.gallery_file}.",
        f"Calibration, each of {len(validation.families)} data families left out of the fit in turn "
        f"({validation.cases} cases, {percent(validation.head_enough_share)} with the head enough): "
        f'"is the head enough?" balanced accuracy {chosen.balanced_accuracy:.2f} (a constant answer: '
        f"{validation.constant.balanced_accuracy:.2f}), gain off by {chosen.rmse:.1f} points (constant: "
        f"{validation.constant.rmse:.1f}), strategy within the seeds' spread in {percent(validation.strategy_agrees)} "
        f"(always `{validation.constant_strategy}`: {percent(validation.constant_strategy_agrees)}).",
    ]
    if verdict.outside:
        lines.append(f"Outside the calibration: {'; '.join(verdict.outside)}. So: {verdict.advice}.")
    if setup.test_images is not None and (warning := small_test_split_warning(setup.test_images)):
        lines.append(f"Warning: {warning}.")
    return lines + [f"{setup.seconds:.0f} s, decoding included."]


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
        *rule_lines(report),
        *case_lines(report),
        *label_lines(report),
    ]
    return "\n".join(lines) + "\n"


def score_lines(report: VerdictReport) -> list[str]:
    setup, scores, used = report.setup, report.scores, set(report.rule.features)

    def role(feature: str) -> str:
        return "**used by the rule**" if feature in used else "context"

    return [
        "## Scores",
        "",
        "| score | value | in the verdict | what it says |",
        "|---|---|---|---|",
        f"| linear probe accuracy | {scores.probe_accuracy:.4f} | {role('probe error')} | the head alone, "
        f"{setup.folds}-fold on train + val |",
        f"| kNN accuracy (k = {setup.knn_neighbors}) | {scores.knn_accuracy:.4f} | {role('kNN below probe')} | "
        "how well neighbours in feature space share labels |",
        f"| LogME | {scores.logme:.4f} | {role('LogME')} | evidence of a linear model on the features "
        "(You et al. 2021) |",
        f"| multi-depth probe accuracy | {scores.multi_depth_accuracy:.4f} | {role('multi-depth gain')} | every "
        "block's pooled features together (Head2Toe) |",
        f"| images per class | {scores.images_per_class:.0f} | {role('log2 images per class')} | training images |",
        f"| label issue rate | {scores.label_issue_rate:.4f} | {role('probe error')} (as wrong labels: "
        f"{scores.wrong_label_rate:.4f}) | images cleanlab flags on the probe's out-of-fold probabilities |",
        "",
        "| block | probe accuracy on its features | BatchNorm shift (std) | tuned |",
        "|---|---|---|---|",
        *(block_row(block, report) for block in dict.fromkeys([*scores.block_probe_accuracy, *scores.batchnorm_shift])),
        "",
        *(NO_BATCHNORM if not scores.batchnorm_shift else []),
    ]


NO_BATCHNORM = [
    "The backbone has no BatchNorm (a ViT, say): no statistics shift to measure; the per-block probes decide where "
    "to tune.",
    "",
]


def block_row(block: str, report: VerdictReport) -> str:
    probe, shift = report.scores.block_probe_accuracy.get(block), report.scores.batchnorm_shift.get(block)
    tuned = "yes" if block in report.verdict.blocks else ""
    return (
        f"| `{block}` | {'-' if probe is None else f'{probe:.3f}'} | {'-' if shift is None else f'{shift:.2f}'} | "
        f"{tuned} |"
    )


def rule_lines(report: VerdictReport) -> list[str]:
    validation, rule = report.validation, report.rule
    constant = validation.constant

    def auc(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return [
        "## The rule, and how it fares on families it was not fitted on",
        "",
        f"Expected gain = {' + '.join(f'{w:+.3f} × {f}' for f, w in zip(rule.features, rule.weights, strict=True))} "
        f"(points; least squares on all {validation.cases} cases). Chosen among the candidates below as the simplest "
        "whose held-out mean squared error is within one standard error of the lowest; each family's cases are "
        "predicted by the candidate fitted on the other families (pipeline/choice/rule_validation.py).",
        "",
        "| rule | scores it uses | gain RMSE ± its standard error, points | head enough: balanced accuracy | ROC AUC |",
        "|---|---|---|---|---|",
        *(
            f"| {'**' + s.name + '**' if s.name == validation.chosen else s.name} | {', '.join(s.features)} | "
            f"{s.rmse:.2f} ± {s.rmse_se:.2f} | {s.balanced_accuracy:.2f} | {auc(s.roc_auc)} |"
            for s in validation.rules
        ),
        f"| constant: the training families' mean gain | - | {constant.rmse:.2f} | {constant.balanced_accuracy:.2f} "
        f"| {auc(constant.roc_auc)} |",
        "",
        "Reliability of the chosen rule, held out: what it states against how often it is right.",
        "",
        "| certainty | cases | stated confidence | right |",
        "|---|---|---|---|",
        *(f"| {b.certainty} | {b.cases} | {b.stated:.2f} | {b.right:.2f} |" for b in validation.reliability),
        "",
    ]


def case_lines(report: VerdictReport) -> list[str]:
    worth_it = report.setup.worth_it
    return [
        "## The calibration cases",
        "",
        f'Listed in `reports/calibration/cases.yaml`; "head enough": a measured gain below {worth_it:g} points. '
        "The held-out verdict is the chosen rule fitted without the case's family.",
        "",
        "| case | family | measured gain | held-out gain | head enough: measured / verdict | verdict's strategy "
        "| within the seeds' spread |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| `{c.name}` | {c.family} | {c.measured_gain:+.1f} | {c.predicted_gain:+.1f} | "
            f"{yes_no(c.head_enough)} / {yes_no(c.predicted_head_enough)}"
            + ("" if c.head_enough == c.predicted_head_enough else " **wrong**")
            + f" | `{c.strategy}` | {', '.join(c.within_spread)} |"
            for c in report.validation.checks
        ),
        "",
    ]


def label_lines(report: VerdictReport) -> list[str]:
    return [
        "## Labels to check",
        "",
        "Flagged images are counted as wrong labels only in the share the label check found (labels flipped on "
        "purpose in each calibration case's split, then looked for): "
        + ", ".join(f"precision {r.precision:.2f} at probe {r.probe_accuracy:.2f}" for r in report.label_check[:6])
        + ("." if report.label_check else "no check was run, so none is."),
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
    # wrapped: the figure of an empty gallery is one image wide, and a long title was clipped at both ends
    title = "Labels the frozen features' probe doubts most"
    fig.suptitle(title.replace(" features'", "\nfeatures'") if columns == 1 else title)
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=100)
    plt.close(fig)
