"""A calibration case scored: the verdict's scores on the data and budget of a measured comparison, beside what
the comparison measured, and the label check on the same data (labels flipped on purpose, then looked for).
`python -m pipeline.commands.calibrate` runs it for every listed case."""

import shutil
from pathlib import Path

from pipeline.choice.assessment import assess
from pipeline.choice.calibration_cases import CalibrationCase, run_stage, transform_label, write_transformed
from pipeline.choice.compare_report import RANDOM_INIT_PROBE, CompareReport
from pipeline.choice.comparison_rule import choose_strategy
from pipeline.choice.label_check import PLANTED_RATE, LabelCheckRow, check_row, flip_labels, precision_at
from pipeline.choice.verdict_rule import Case
from pipeline.config import PARAMS_FILE, ConfigError, Params, parse_params, write_yaml
from pipeline.data.manifest import read_manifest, split_sizes
from pipeline.paths import MANIFEST


def prepared_manifest(params: Params, source: str, folder: Path) -> Path:
    """The split `prepare` makes of `source` with params.yaml's other data settings, in `folder`: run as the
    stage itself, since stages meet only through files."""
    raw = params.model_dump(mode="json")
    raw["data"]["source"] = str(Path(source).resolve())
    write_yaml(folder / PARAMS_FILE.name, raw)
    run_stage("pipeline.stages.prepare", folder)
    return folder / MANIFEST


def case_params(params: Params, report: CompareReport) -> Params:
    model = params.model.model_copy(update={"backbone": report.setup.backbone, "weights": report.setup.weights})
    return params.model_copy(update={"model": model})


def measured_case(listed: CalibrationCase, raw: dict, folder: Path) -> tuple[Case, LabelCheckRow]:
    """A listed case (`raw`: params.yaml's values, under the case's settings) scored: its Case, with the
    wrong-label share still 0 (`with_label_check` sets it once every case's check is in), and its label check."""
    params = parse_params(listed.params(raw), f"case {listed.name}")
    report_file = listed.report
    if not report_file.is_file():
        raise ConfigError(
            f"case {listed.name}: {report_file} not found: `python -m pipeline.commands.calibrate --build`"
        )
    report = CompareReport.read(report_file)
    setup = report.setup
    if report.halving is not None:  # its summaries are of the rung it stopped at, not of the budget it names
        raise ConfigError(f"{report_file} is a halving comparison: calibrate on grid comparisons only")
    write_transformed(listed)  # the transformed copy its comparison ran on, written again if deleted
    manifest = prepared_manifest(params, setup.data_source, folder)
    sizes = split_sizes(read_manifest(manifest))
    if (sizes["val"], sizes["test"]) != (setup.val_images, setup.test_images):
        raise ConfigError(
            f"{report_file}: made on a split of {setup.val_images} val / {setup.test_images} test images, "
            f"params.yaml's data settings give {sizes['val']} / {sizes['test']}: set them as they were"
        )
    scored = case_params(params, report)
    scores = assess(scored, manifest, setup.image_size, setup.train_per_class).scores
    choice = choose_strategy(report.summaries)
    transform = "" if listed.transform is None else f", {transform_label(listed.transform)}"
    case = Case(
        name=listed.name,
        family=listed.family,
        data=listed.data + transform,
        report=report_file.as_posix(),
        backbone=setup.backbone,
        weights=setup.weights,
        image_size=setup.image_size,
        epochs=setup.epochs,
        train_per_class=setup.train_per_class or round(scores.images_per_class),
        scores=scores,
        measured={name: s.mean for name, s in report.summaries.items() if name != RANDOM_INIT_PROBE},
        measured_best=choice.best.strategy,
        measured_within_spread=choice.within_spread(report.summaries),
    )
    return case, label_check(scored, manifest, listed.name, setup)


def label_check(params: Params, manifest: Path, name: str, setup) -> LabelCheckRow:
    """The case's split with PLANTED_RATE of its train and val labels flipped: how many cleanlab finds."""
    flipped_manifest = manifest.with_name("flipped.csv")
    shutil.copy(manifest, flipped_manifest)
    planted = flip_labels(flipped_manifest, PLANTED_RATE, params.seed)
    assessment = assess(params, flipped_manifest, setup.image_size, setup.train_per_class)
    flagged = {assessment.split.paths[index] for index in assessment.issues}
    return check_row(name, assessment.scores.probe_accuracy, flagged, planted)


def with_label_check(cases: list[Case], rows: list[LabelCheckRow]) -> list[Case]:
    """Every case's wrong-label share: its flagged share, times the check's precision at its probe accuracy."""
    return [
        case.model_copy(
            update={"scores": case.scores.with_wrong_labels(precision_at(rows, case.scores.probe_accuracy))}
        )
        for case in cases
    ]
