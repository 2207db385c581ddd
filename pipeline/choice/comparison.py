"""Is training the head enough? Every strategy on the prepared data, same budget, same seeds
(`python -m pipeline.commands.compare`; how and why: docs/strategies.md#comparing-the-strategies).

`compare.method: grid` runs each strategy of `compare.strategies` once per seed at the `compare` budget, plus a
linear probe on random-init features per seed; `halving` stops when the answer is clear
(pipeline.choice.halving_race). Every run is a child of one MLflow parent run; the report goes to
reports/compare.{md,png,json} (or another folder) and to the parent run.
"""

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from pipeline.atomic import atomic_path
from pipeline.choice.batchnorm_shift import batchnorm_shift
from pipeline.choice.compare_markdown import markdown, plot
from pipeline.choice.compare_report import (
    RANDOM_INIT_PROBE,
    CompareReport,
    Halving,
    LoadAverage,
    Result,
    Setup,
    gain_per_minute,
    shift_summary,
    summarize,
)
from pipeline.choice.comparison_rule import findings
from pipeline.choice.halving_race import halving
from pipeline.choice.trials import Shared, TestSplits, run_labels, run_params, scored, strategy_of, train_run
from pipeline.config import Params
from pipeline.data import corruptions
from pipeline.data.manifest import class_names, fingerprint, read_manifest
from pipeline.data.splits import Split, cap_per_class, load_rows, load_split
from pipeline.model.backbones import build
from pipeline.model.features import FrozenFeatures
from pipeline.paths import MANIFEST, REPORT_DIR, VERDICT_JSON
from pipeline.tracking import runs, store


def grid(params: Params, train: Split, val: Split, test: TestSplits, shared: Shared) -> list[Result]:
    """Every strategy x seed at the `compare` budget."""
    results = []
    for seed in params.compare.seeds:
        for label, weights in run_labels(params, params.compare.strategies):
            trial = train_run(run_params(params, strategy_of(label), seed, weights), label, train, val, shared)
            results.append(scored(trial, test, shared.frozen))
    return results


@dataclass
class Outcome:
    """What the grid or halving ran: the runs scored on test, the findings, and the budget they were made at."""

    results: list[Result]
    recommendation: list[str]
    train: Split
    epochs: int
    train_per_class: int | None
    halving: Halving | None = None


def run_method(params: Params, rows: list[dict], val: Split, test: TestSplits, shared: Shared, verdict: Path):
    """The grid, or halving, on the training images of `rows` (each run's seeded share, decoded on demand)."""
    budget, data = params.compare, params.data
    train_rows = [row for row in rows if row["split"] == "train"]

    def load_train(per_class: int | None) -> Split:
        """The seeded `per_class` training images of each class, chosen before decoding so only they are decoded."""
        chosen = cap_per_class(train_rows, per_class, params.seed)
        return load_rows(
            chosen, shared.classes, budget.image_size, data.max_image_pixels, data.decoded, "train", data.shards
        )

    if budget.method == "grid":
        train = load_train(budget.train_per_class)
        results = grid(params, train, val, test, shared)
        return Outcome(results, findings(summarize(results)), train, budget.epochs, budget.train_per_class)
    ran = halving(params, load_train, val, test, shared, verdict)
    final = ran.halving.final
    return Outcome(ran.results, ran.recommendation, ran.train, final.epochs, final.train_per_class, ran.halving)


def train_seconds(report: CompareReport) -> float:
    """Training seconds of every run the comparison made: all rungs' under halving."""
    if report.halving is None:
        return sum(run.train_seconds for run in report.runs)
    rungs = sum(sum(rung.train_seconds.values()) for rung in report.halving.rungs)
    return rungs + sum(run.train_seconds for run in report.runs if run.strategy == RANDOM_INIT_PROBE)


def assemble(params: Params, outcome: Outcome, splits: dict[str, Split], shared: Shared, run_id: str) -> CompareReport:
    budget = params.compare
    setup = Setup(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        git_commit=shared.commit,
        parent_run_id=run_id,
        method=budget.method,
        data_source=params.data.source,
        train_images=len(outcome.train.labels),
        train_per_class=outcome.train_per_class,
        val_images=len(splits["val"].labels),
        test_images=len(splits["test"].labels),
        classes=len(shared.classes),
        image_size=budget.image_size,
        backbone=params.model.backbone,
        weights=params.model.weights,
        epochs=outcome.epochs,
        head_epochs=budget.head_epochs,
        seeds=budget.seeds,
        worth_it=budget.worth_it,
    )
    summaries = summarize(outcome.results)
    pretrained = build(params.model.backbone, params.model.weights, len(shared.classes), budget.image_size)
    fields = {
        "setup": setup,
        "recommendation": outcome.recommendation,
        "summaries": summaries,
        "gain_per_minute": gain_per_minute(summaries),
        "shifted_test": shift_summary(outcome.results, params.seed),
        "batchnorm_shift": batchnorm_shift(pretrained, outcome.train.images),
        "runs": outcome.results,
    }
    return CompareReport(**fields, **({"halving": outcome.halving} if outcome.halving else {}))


def finish(report: CompareReport, started: float, load_before: list[float]) -> None:
    """The times and the machine's load, known once every run is done."""
    report.setup.train_seconds = train_seconds(report)
    report.setup.seconds = time.perf_counter() - started
    report.setup.load_average = LoadAverage(cores=os.cpu_count(), before=load_before, after=list(os.getloadavg()))


def compare(
    params: Params, manifest: Path = MANIFEST, out_dir: Path = REPORT_DIR, verdict_file: Path = VERDICT_JSON
) -> CompareReport:
    """Run the comparison on the prepared split of `manifest`; write and return the report."""
    store.check_reachable()  # before minutes of decoding and training
    started, load_before = time.perf_counter(), list(os.getloadavg())
    budget, data = params.compare, params.data
    rows = read_manifest(manifest)
    splits = {
        split: load_split(rows, split, budget.image_size, data.max_image_pixels, data.decoded, data.shards)
        for split in ("val", "test")
    }
    test = TestSplits(splits["test"], *corruptions.shifted_copy(splits["test"].images, params.seed))
    runs.use_experiment(params)
    shared = Shared(class_names(rows), fingerprint(manifest), runs.git_commit(), FrozenFeatures())
    name = "compare" if budget.method == "grid" else "compare (halving)"
    tags = {"git_commit": shared.commit, "kind": "compare", "method": budget.method}
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        mlflow.log_params(runs.flatten({"compare": budget.model_dump(mode="json"), "data": {"source": data.source}}))
        outcome = run_method(params, rows, splits["val"], test, shared, verdict_file)
        report = assemble(params, outcome, splits, shared, parent.info.run_id)
        finish(report, started, load_before)
        for name, s in report.summaries.items():
            key = re.sub(r"[^\w\-. ]", "", name)  # MLflow's allowed characters
            runs.log_metrics({f"test/accuracy_mean.{key}": s.mean, f"test/accuracy_std.{key}": s.std})
        runs.log_metrics({"compare/seconds": report.setup.seconds, "compare/train_seconds": report.setup.train_seconds})
        report.write(out_dir / "compare.json")
        plot(report.summaries, out_dir / "compare.png")
        with atomic_path(out_dir / "compare.md") as partial:
            partial.write_text(markdown(report))
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
    return report
