"""The `verdict` stage: is training the head enough? Asked before training, from one pass of the frozen backbone.

    dvc repro verdict                     # = python -m pipeline.stages.verdict, after prepare

Scores train + val (pipeline.choice.assessment), decides with the rule of pipeline.choice.verdict_rule fitted
on reports/verdict/calibration.csv, and writes reports/verdict/verdict.{json,md} and label_issues.png, logged on
an MLflow run of their own. `python -m pipeline.commands.apply verdict` sets its strategy in params.yaml.
"""

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from pipeline.atomic import OutputNotWritable, atomic_path, check_writable
from pipeline.choice.assessment import Assessment, assess, issue_rows, write_gallery
from pipeline.choice.verdict_report import VerdictReport, VerdictSetup, markdown, summary_lines
from pipeline.choice.verdict_rule import calibrate, decide, read_cases
from pipeline.config import ConfigError, Params, load_params
from pipeline.paths import MANIFEST, VERDICT_CALIBRATION, VERDICT_DIR, VERDICT_GALLERY, VERDICT_JSON, VERDICT_MD
from pipeline.tracking import runs, store


def report_of(params: Params, assessment: Assessment, out_dir: Path, run_id: str, started: float) -> VerdictReport:
    """Decide from the scores with the rule calibrated for this budget; the whole report."""
    settings, scores = params.verdict, assessment.scores
    calibration = calibrate(
        read_cases(out_dir / VERDICT_CALIBRATION.name), params.train.epochs, settings.worth_it, settings.shift_threshold
    )
    decided = decide(
        scores.probe_accuracy,
        scores.label_issue_rate,
        scores.batchnorm_shift,
        calibration.recovery,
        calibration.gain_sd,
        settings.worth_it,
        settings.shift_threshold,
    )
    rows = issue_rows(assessment, settings.gallery)
    write_gallery(assessment, rows, out_dir / VERDICT_GALLERY.name)
    setup = VerdictSetup(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        git_commit=runs.git_commit(),
        run_id=run_id,
        data_source=params.data.source,
        images=scores.images,
        classes=len(assessment.classes),
        image_size=params.train.image_size,
        epochs=params.train.epochs,
        backbone=params.model.backbone,
        weights=params.model.weights,
        folds=assessment.folds,
        knn_neighbors=settings.knn_neighbors,
        worth_it=settings.worth_it,
        shift_threshold=settings.shift_threshold,
        gallery_file=(out_dir / VERDICT_GALLERY.name).as_posix(),
        seconds=time.perf_counter() - started,
    )
    return VerdictReport(
        setup=setup,
        verdict=decided,
        scores=scores,
        calibration=calibration,
        label_issue_count=len(assessment.issues),
        label_issues=rows,
    )


def metrics_of(report: VerdictReport) -> dict[str, float]:
    scores, calibration = report.scores, report.calibration
    return {
        **{f"verdict/{key}": value for key, value in scores.model_dump().items() if isinstance(value, float | int)},
        **{f"verdict/shift.{block}": value for block, value in scores.batchnorm_shift.items()},
        "verdict/expected_gain": report.verdict.expected_gain,
        "verdict/confidence": report.verdict.confidence,
        "verdict/recovery": calibration.recovery,
        "verdict/calibration_agreement": calibration.agreement / len(calibration.cases),
        "verdict/calibration_gain_rmse": calibration.gain_sd,
        "verdict/seconds": report.setup.seconds,
    }


def verdict(params: Params, manifest: Path = MANIFEST, out_dir: Path = VERDICT_DIR) -> VerdictReport:
    """Score the prepared split, decide, write the report to `out_dir` and log it on its own MLflow run."""
    started = time.perf_counter()
    store.check_reachable()  # before the pass, not after it
    assessment = assess(params, manifest, params.train.image_size)
    runs.use_experiment(params)
    logged = {
        "verdict": params.verdict.model_dump(mode="json"),
        "data": {"source": params.data.source},
        "model": params.model.model_dump(mode="json"),
        "train": {"image_size": params.train.image_size, "epochs": params.train.epochs},
    }
    tags = {"kind": "verdict", "git_commit": runs.git_commit()}
    with mlflow.start_run(run_name=f"verdict · {params.model.backbone}", tags=tags) as run:
        mlflow.log_params(runs.flatten(logged))
        report = report_of(params, assessment, out_dir, run.info.run_id, started)
        runs.log_metrics(metrics_of(report))
        decided = report.verdict
        mlflow.set_tags(
            {
                "verdict.strategy": decided.strategy,
                "verdict.decision": decided.decision,
                "verdict.certainty": decided.certainty,
            }
        )
        runs.describe_run("\n\n".join(summary_lines(report)))
        report.write(out_dir / VERDICT_JSON.name)
        with atomic_path(out_dir / VERDICT_MD.name) as partial:
            partial.write_text(markdown(report))
        for name in (VERDICT_JSON, VERDICT_MD, VERDICT_GALLERY, VERDICT_CALIBRATION):
            mlflow.log_artifact(str(out_dir / name.name), artifact_path="verdict")
    return report


def main() -> None:
    try:
        params = load_params()
        check_writable(VERDICT_JSON, VERDICT_MD, VERDICT_GALLERY)
        report = verdict(params)
    except (ConfigError, OutputNotWritable) as exc:
        sys.exit(f"verdict: {exc}")
    print("\n".join(summary_lines(report)))
    print(f"report: {VERDICT_MD}; `python -m pipeline.commands.apply verdict` sets this strategy in params.yaml")


if __name__ == "__main__":
    main()
