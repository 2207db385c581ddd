"""Recompute the verdict's calibration cases (reports/verdict/calibration.csv) from the explicit list of
comparisons in reports/calibration/cases.yaml: the verdict's scores on each comparison's data and budget,
beside what the comparison measured.

    python -m pipeline.commands.calibrate           # score the listed comparisons
    python -m pipeline.commands.calibrate --build   # only run the comparison of each listed case that has none

The cases and their build: pipeline.choice.calibration_cases. A case's comparison runs in a temporary copy of the
project (its own prepared split, this project's MLflow store); one whose report exists is not run again, so a
killed --build resumes case by case.
"""

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from pipeline.choice.assessment import assess
from pipeline.choice.calibration_cases import build_missing, read_cases, run_stage
from pipeline.choice.compare_report import CompareReport
from pipeline.choice.comparison_rule import choose_strategy
from pipeline.choice.verdict_rule import Case, shift_text, write_cases
from pipeline.config import PARAMS_FILE, ConfigError, Params, load_params, write_yaml
from pipeline.data.manifest import read_manifest, split_sizes
from pipeline.paths import MANIFEST, VERDICT_CALIBRATION


def prepared_manifest(params: Params, source: str, folder: Path) -> Path:
    """The split `prepare` makes of `source` with params.yaml's other data settings, in `folder`: run as the
    stage itself, since stages meet only through files."""
    raw = params.model_dump(mode="json")
    raw["data"]["source"] = str(Path(source).resolve())
    write_yaml(folder / PARAMS_FILE.name, raw)
    run_stage("pipeline.stages.prepare", folder)
    return folder / MANIFEST


def measured_case(params: Params, report_file: Path, folder: Path) -> Case:
    """The verdict's scores at a comparison's data and budget, beside what the comparison measured."""
    report = CompareReport.read(report_file)
    setup = report.setup
    if report.halving is not None:  # its summaries are of the rung it stopped at, not of the budget it names
        raise ConfigError(f"{report_file} is a halving comparison: calibrate on grid comparisons only")
    manifest = prepared_manifest(params, setup.data_source, folder)
    sizes = split_sizes(read_manifest(manifest))
    if (sizes["val"], sizes["test"]) != (setup.val_images, setup.test_images):
        raise ConfigError(
            f"{report_file}: made on a split of {setup.val_images} val / {setup.test_images} test images, "
            f"params.yaml's data settings give {sizes['val']} / {sizes['test']}: set them as they were"
        )
    model = params.model.model_copy(update={"backbone": setup.backbone, "weights": setup.weights})
    scores = assess(
        params.model_copy(update={"model": model}), manifest, setup.image_size, setup.train_per_class
    ).scores
    choice = choose_strategy(report.summaries)
    head, best = report.summaries["head"], choice.best
    return Case(
        report=report_file.as_posix(),
        data_source=setup.data_source,
        backbone=setup.backbone,
        image_size=setup.image_size,
        train_per_class=setup.train_per_class,
        epochs=setup.epochs,
        images=scores.images,
        probe_accuracy=round(scores.probe_accuracy, 4),
        knn_accuracy=round(scores.knn_accuracy, 4),
        logme=round(scores.logme, 4),
        multi_depth_accuracy=round(scores.multi_depth_accuracy, 4),
        label_issue_rate=round(scores.label_issue_rate, 4),
        batchnorm_shift=shift_text(scores.batchnorm_shift),
        measured_head=round(head.mean, 4),
        measured_best_strategy=best.strategy,
        measured_best=round(best.mean, 4),
        measured_gain=round(100 * (best.mean - head.mean), 2),
        measured_recommended=choice.chosen.strategy,
        measured_within_spread=" ".join(choice.within_spread(report.summaries)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build", action="store_true", help="only run the comparison of each listed case that has none"
    )
    args = parser.parse_args()
    # `kill PID` ends a build as Ctrl-C does: its temporary project copy is removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("calibration: stopped"))
    cases = []
    try:
        listed_cases = read_cases()
        if args.build:
            failed = build_missing(listed_cases)
            sys.exit(f"calibration: cases that failed: {', '.join(failed)}" if failed else 0)
        params = load_params()
        for listed in listed_cases:
            with tempfile.TemporaryDirectory() as folder:
                cases.append(measured_case(params, listed.report, Path(folder)))
            print(
                f"{listed.report}: probe {cases[-1].probe_accuracy:.3f}, measured gain {cases[-1].measured_gain:+.1f}"
            )
    except ConfigError as exc:
        sys.exit(f"calibration: {exc}")
    write_cases(VERDICT_CALIBRATION, cases)
    print(f"written: {VERDICT_CALIBRATION}")


if __name__ == "__main__":
    main()
