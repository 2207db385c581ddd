"""The `verdict` stage: is training the head enough? Asked before training, from one pass of the frozen backbone.

    dvc repro verdict                     # = python -m pipeline.stages.verdict, after prepare

Scores train + val (pipeline.choice.assessment), fits the rule that fares best on calibration families left out
(pipeline.choice.rule_validation) on reports/verdict/calibration.jsonl, decides (pipeline.choice.decision), and
writes reports/verdict/verdict.{json,md} and label_issues.png, logged on an MLflow run of their own and in the
experiment's description. Its answer, as finetune settings, goes to reports/verdict/strategy.json: what
`finetune.strategy: verdict` trains; `python -m pipeline.commands.apply verdict` writes it into params.yaml instead.
"""

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from pipeline.atomic import OutputNotWritable, atomic_path, check_writable, write_json
from pipeline.choice.assessment import Assessment, assess, issue_rows, write_gallery
from pipeline.choice.coverage import Coverage
from pipeline.choice.decision import decide
from pipeline.choice.label_check import read_rows
from pipeline.choice.rule_validation import validate
from pipeline.choice.verdict_report import VerdictReport, VerdictSetup, markdown, summary_lines
from pipeline.choice.verdict_rule import fit, read_cases
from pipeline.config import ConfigError, Params, VerdictStrategy, load_params
from pipeline.data.manifest import read_manifest, split_sizes
from pipeline.paths import (
    LABEL_CHECK,
    MANIFEST,
    VERDICT_CALIBRATION,
    VERDICT_DIR,
    VERDICT_GALLERY,
    VERDICT_JSON,
    VERDICT_MD,
    VERDICT_STRATEGY,
)
from pipeline.tracking import experiment_page, runs, store


def setup_of(params: Params, assessment: Assessment, manifest: Path, out_dir: Path, run_id: str, seconds: float):
    """What was judged and how: train + val were scored; of the test split, only its size matters here."""
    return VerdictSetup(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        git_commit=runs.git_commit(),
        run_id=run_id,
        data_source=params.data.source,
        images=assessment.scores.images,
        classes=len(assessment.classes),
        image_size=params.train.image_size,
        epochs=params.train.epochs,
        backbone=params.model.backbone,
        weights=params.model.weights,
        folds=assessment.folds,
        knn_neighbors=params.verdict.knn_neighbors,
        worth_it=params.verdict.worth_it,
        shift_threshold=params.verdict.shift_threshold,
        gallery_file=(out_dir / VERDICT_GALLERY.name).as_posix(),
        seconds=seconds,
        test_images=split_sizes(read_manifest(manifest))["test"],
    )


def report_of(
    params: Params, assessment: Assessment, label_check, where: tuple[Path, Path], run_id: str, started: float
):
    """The rule chosen and fitted on the calibration cases, its verdict on these scores, and the whole report;
    `where` is the manifest judged and the report's folder."""
    manifest, out_dir = where
    cases = read_cases(out_dir / VERDICT_CALIBRATION.name)
    settings = (params.verdict.worth_it, params.verdict.shift_threshold, params.finetune.unfreeze_blocks)
    validation = validate(cases, settings)
    rule = fit(validation.chosen, cases, gain_sd=validation.chosen_score.rmse)
    outside = Coverage.of(cases).outside(assessment.scores, params.train.image_size, params.model.backbone)
    decided = decide(rule, assessment.scores, params.train.epochs, assessment.blocks, settings, outside)
    rows = issue_rows(assessment, params.verdict.gallery)
    write_gallery(assessment, rows, out_dir / VERDICT_GALLERY.name)
    return VerdictReport(
        setup=setup_of(params, assessment, manifest, out_dir, run_id, time.perf_counter() - started),
        verdict=decided,
        scores=assessment.scores,
        rule=rule,
        validation=validation,
        label_check=label_check,
        label_issue_count=len(assessment.issues),
        label_issues=rows,
    )


def metrics_of(report: VerdictReport) -> dict[str, float]:
    scores, chosen = report.scores, report.validation.chosen_score
    return {
        **{f"verdict/{key}": value for key, value in scores.model_dump().items() if isinstance(value, float | int)},
        **{f"verdict/shift.{block}": value for block, value in scores.batchnorm_shift.items()},
        "verdict/expected_gain": report.verdict.expected_gain,
        "verdict/confidence": report.verdict.confidence,
        "verdict/calibration_balanced_accuracy": chosen.balanced_accuracy,
        "verdict/calibration_gain_rmse": chosen.rmse,
        "verdict/seconds": report.setup.seconds,
    }


def verdict(params: Params, manifest: Path = MANIFEST, out_dir: Path = VERDICT_DIR) -> VerdictReport:
    """Score the prepared split, decide, write the report to `out_dir` and log it on its own MLflow run, which
    spans the whole of it (the pass included), so that its duration in the UI is the verdict's `seconds`: both
    start once the store is ready (a new store's tables take seconds to make, no part of the verdict)."""
    store.check_reachable()  # before the pass, not after it
    label_check = read_rows(out_dir / LABEL_CHECK.name)
    runs.use_experiment(params)
    logged = {
        "verdict": params.verdict.model_dump(mode="json"),
        "data": {"source": params.data.source},
        "model": params.model.model_dump(mode="json"),
        "train": {"image_size": params.train.image_size, "epochs": params.train.epochs},
    }
    # named after the data it judged, in the runs table
    name = runs.run_name("verdict", Path(params.data.source).name, params.model.backbone)
    with mlflow.start_run(run_name=name, tags={"kind": "verdict"}) as run:
        started = time.perf_counter()
        mlflow.log_params(runs.flatten(logged))
        assessment = assess(params, manifest, params.train.image_size, label_check=label_check)
        report = report_of(params, assessment, label_check, (manifest, out_dir), run.info.run_id, started)
        runs.log_metrics(metrics_of(report))
        decided = report.verdict
        mlflow.set_tags(
            {
                "git_commit": report.setup.git_commit,
                "verdict.strategy": decided.strategy,
                "verdict.decision": decided.decision,
                "verdict.certainty": decided.certainty,
                **({"dvc_experiment": experiment} if (experiment := runs.dvc_experiment()) else {}),
            }
        )
        runs.describe_run("\n\n".join(summary_lines(report)))
        report.write(out_dir / VERDICT_JSON.name)
        with atomic_path(out_dir / VERDICT_MD.name) as partial:
            partial.write_text(markdown(report))
        chosen = VerdictStrategy(
            strategy=decided.strategy, unfreeze_blocks=decided.unfreeze_blocks, decision=decided.decision
        )
        write_json(out_dir / VERDICT_STRATEGY.name, chosen.model_dump())
        for name in (VERDICT_JSON, VERDICT_MD, VERDICT_GALLERY, VERDICT_CALIBRATION, VERDICT_STRATEGY):
            mlflow.log_artifact(str(out_dir / name.name), artifact_path="verdict")
    experiment_page.describe_experiment(run.info.experiment_id, params.data_name())
    return report


def main() -> None:
    try:
        params = load_params()
        check_writable(VERDICT_JSON, VERDICT_MD, VERDICT_GALLERY, VERDICT_STRATEGY)
        report = verdict(params)
    except (ConfigError, OutputNotWritable) as exc:
        sys.exit(f"verdict: {exc}")
    print("\n".join(summary_lines(report)))
    print(
        f"report: {VERDICT_MD}; `finetune.strategy: verdict` trains this strategy "
        "(`python -m pipeline.commands.apply verdict` writes it into params.yaml)"
    )


if __name__ == "__main__":
    main()
