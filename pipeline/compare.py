"""Is training the head enough? Every strategy on the prepared data, same budget, same seeds.

    make compare                  # = dvc repro prepare && python -m pipeline.compare
    python -m pipeline.compare --apply   # finetune.strategy in params.yaml := the report's recommendation

Each strategy of `compare.strategies` runs once per seed of `compare.seeds` at the budget of the
`compare` section, plus a linear probe on random-init features per seed (what pretraining brings),
each as a child of one MLflow parent run. The report (pipeline.compare_report) goes to
reports/compare.{md,png,json} and to the parent run.
"""

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from pipeline import tracking, trained
from pipeline.atomic import atomic_path, write_json
from pipeline.backbones import build
from pipeline.compare_report import (
    RANDOM_INIT_PROBE,
    Result,
    Summary,
    markdown,
    plot,
    recommend,
    recommended,
    summarize,
)
from pipeline.config import ConfigError, Params, load_params, parse_params, set_param
from pipeline.decoded import Split, cap_per_class, load_rows, load_split
from pipeline.diagnostics import batchnorm_shift
from pipeline.manifest import class_names, fingerprint, read_manifest
from pipeline.paths import MANIFEST, REPORT_DIR
from pipeline.training import Callbacks, train_model


def run_params(params: Params, strategy: str, seed: int, weights: str | None = None) -> Params:
    """params.yaml with the comparison's budget, the strategy and the seed of one run."""
    raw = params.model_dump(mode="json")
    budget = params.compare
    raw["seed"] = seed
    raw["finetune"] |= {"strategy": strategy, "head_epochs": budget.head_epochs}
    raw["train"] |= {"epochs": budget.epochs, "image_size": budget.image_size}
    if weights is not None:
        raw["model"]["weights"] = weights
    return parse_params(raw, "compare")


def run_one(params: Params, label: str, splits: dict[str, Split], classes: list[str], data: str, commit: str) -> Result:
    """One child run: train with `params` through the pipeline's own entry point, score the best epoch on test."""
    tags = {"strategy": label, "seed": str(params.seed), "git_commit": commit}
    with mlflow.start_run(run_name=f"{label} seed {params.seed}", nested=True, tags=tags) as run:
        tracking.log_run_params(params)
        callbacks = Callbacks(on_plan=tracking.log_plan, on_epoch=tracking.log_epoch)
        started = time.perf_counter()
        result = train_model(params, classes, splits["train"], splits["val"], data, callbacks)
        seconds = time.perf_counter() - started
        test = splits["test"]
        predicted = trained.predict_probabilities(result.model, test.images).argmax(1)
        accuracy = (predicted == test.labels).float().mean().item()
        tracking.log_metrics(
            {"test/accuracy": accuracy, "val/best_accuracy": result.best["val_accuracy"], "train/seconds": seconds}
        )
    trained_params = result.trainable_params
    print(f"{label:>20} seed {params.seed}: test accuracy {accuracy:.4f}, {trained_params:,} trained, {seconds:.0f} s")
    return Result(label, params.seed, accuracy, result.best["val_accuracy"], seconds, trained_params, run.info.run_id)


def compare(params: Params, manifest: Path = MANIFEST, out_dir: Path = REPORT_DIR) -> dict:
    """Run the comparison on the prepared split of `manifest`; write and return the report."""
    tracking.check_reachable()  # before minutes of decoding and training
    budget = params.compare
    rows = read_manifest(manifest)
    classes = class_names(rows)
    size, max_pixels = budget.image_size, params.data.max_image_pixels
    decoded = params.data.decoded
    splits = {split: load_split(rows, split, size, max_pixels, decoded) for split in ("val", "test")}
    train_rows = cap_per_class([row for row in rows if row["split"] == "train"], budget.train_per_class, params.seed)
    splits["train"] = load_rows(train_rows, classes, size, max_pixels, decoded, "train")
    runs = [(strategy, params.model.weights) for strategy in budget.strategies]
    if budget.random_init_probe and params.model.weights.lower() != "none":
        runs.append((RANDOM_INIT_PROBE, "none"))
    tracking.use_experiment(params)
    results = []
    commit, data = tracking.git_commit(), fingerprint(manifest)
    with mlflow.start_run(run_name="compare", tags={"git_commit": commit, "kind": "compare"}) as parent:
        mlflow.log_params(
            tracking.flatten({"compare": budget.model_dump(mode="json"), "data": {"source": params.data.source}})
        )
        for seed in budget.seeds:
            for label, weights in runs:
                strategy = "head" if label == RANDOM_INIT_PROBE else label
                results.append(
                    run_one(run_params(params, strategy, seed, weights), label, splits, classes, data, commit)
                )
        pretrained = build(params.model.backbone, params.model.weights, len(classes))
        summaries = summarize(results)
        report = {
            "setup": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "git_commit": commit,
                "parent_run_id": parent.info.run_id,
                "data_source": params.data.source,
                "train_images": len(splits["train"].labels),
                "train_per_class": budget.train_per_class,
                "val_images": len(splits["val"].labels),
                "test_images": len(splits["test"].labels),
                "classes": len(classes),
                "image_size": size,
                "backbone": params.model.backbone,
                "weights": params.model.weights,
                "epochs": budget.epochs,
                "head_epochs": budget.head_epochs,
                "seeds": budget.seeds,
            },
            "recommendation": recommend(summaries),
            "summaries": {name: asdict(s) for name, s in summaries.items()},
            "batchnorm_shift": batchnorm_shift(pretrained, splits["train"].images),
            "runs": [asdict(r) for r in results],
        }
        for name, s in summaries.items():
            key = re.sub(r"[^\w\-. ]", "", name)  # MLflow's allowed characters
            tracking.log_metrics({f"test/accuracy_mean.{key}": s.mean, f"test/accuracy_std.{key}": s.std})
        write_json(out_dir / "compare.json", report)
        plot(summaries, out_dir / "compare.png")
        with atomic_path(out_dir / "compare.md") as partial:
            partial.write_text(markdown(report))
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
    return report


def apply(report_file: Path) -> str:
    """Set params.yaml's finetune.strategy to the one a comparison's report recommends; return it."""
    if not report_file.is_file():
        raise ConfigError(f"{report_file} not found: run `make compare` first")
    report = json.loads(report_file.read_text())
    summaries = {name: Summary(**summary) for name, summary in report["summaries"].items()}
    strategy = recommended(summaries)[0].strategy
    set_param("finetune.strategy", strategy)
    return strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--apply",
        nargs="?",
        const=REPORT_DIR / "compare.json",
        type=Path,
        metavar="REPORT",
        help="instead of comparing, set finetune.strategy in params.yaml to what a report recommends "
        "(default: reports/compare.json)",
    )
    args = parser.parse_args()
    if args.apply:
        try:
            strategy = apply(args.apply)
        except ConfigError as exc:
            sys.exit(f"not applied: {exc}")
        print(f"params.yaml: finetune.strategy: {strategy} (recommended by {args.apply}); `dvc repro` trains it")
        return
    report = compare(load_params())
    print("\n".join(report["recommendation"]))
    print(f"report: {REPORT_DIR / 'compare.md'}")
    print("`python -m pipeline.compare --apply` sets this recommendation in params.yaml")


if __name__ == "__main__":
    main()
