"""Is training the head enough? Every strategy on the prepared data, same budget, same seeds.

    make compare                  # = dvc repro prepare && python -m pipeline.compare
    python -m pipeline.compare --apply   # finetune.strategy in params.yaml := the report's recommendation

`compare.method: grid` runs each strategy of `compare.strategies` once per seed of `compare.seeds` at the
budget of the `compare` section, plus a linear probe on random-init features per seed (what pretraining
brings), each as a child of one MLflow parent run. `halving` starts every strategy at a small budget, drops
the worse half at each rung and stops once a paired test decides whether fine-tuning is worth it
(pipeline.halving); its parent run has a child per rung, whose children are the rung's runs, and it runs the
random-init probe once, with the first seed. Both score every run on the test split and on a shifted copy of
it (pipeline.shift); a run that trained only the head is scored on the features of the pretrained body,
passed once for all such runs. The report (pipeline.compare_report) goes to reports/compare.{md,png,json}
(or --out) and to the parent run.
"""

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import torch

from pipeline import shift, tracking, trained
from pipeline.atomic import atomic_path, write_json
from pipeline.backbones import build
from pipeline.compare_report import (
    RANDOM_INIT_PROBE,
    Result,
    Summary,
    gain_per_minute,
    markdown,
    plot,
    recommend,
    recommended,
    shift_summary,
    summarize,
)
from pipeline.config import ConfigError, Params, load_params, parse_params, set_param
from pipeline.decoded import Split, cap_per_class, load_rows, load_split
from pipeline.diagnostics import batchnorm_shift
from pipeline.halving import (
    UNDECIDED,
    WORTH_IT,
    Budget,
    PairedTest,
    points,
    race,
    recommendation,
    rung_budgets,
    seed_from_verdict,
    survivors,
)
from pipeline.manifest import class_names, fingerprint, read_manifest
from pipeline.paths import MANIFEST, REPORT_DIR, VERDICT_JSON
from pipeline.training import Callbacks, FrozenFeatures, Trained, body_as_built, train_model


def run_params(
    params: Params, strategy: str, seed: int, weights: str | None = None, epochs: int | None = None
) -> Params:
    """params.yaml with the comparison's budget (or a halving rung's `epochs`), the strategy and the seed of a run."""
    raw = params.model_dump(mode="json")
    budget = params.compare
    raw["seed"] = seed
    raw["finetune"] |= {"strategy": strategy, "head_epochs": budget.head_epochs}
    raw["train"] |= {"epochs": epochs or budget.epochs, "image_size": budget.image_size}
    if weights is not None:
        raw["model"]["weights"] = weights
    return parse_params(raw, "compare")


@dataclass
class TestSplits:
    """The test split and its shifted copy (the same images, each corrupted once; pipeline.shift)."""

    clean: Split
    shifted: torch.Tensor
    corruptions: torch.Tensor  # index into shift.CORRUPTIONS, per image


@dataclass
class Shared:
    """What every run of one comparison shares."""

    classes: list[str]
    data: str  # the prepared data's fingerprint
    commit: str
    frozen: FrozenFeatures  # the pretrained body's features, passed once for all runs


@dataclass
class Trial:
    """One trained run, before it is scored on test: what halving keeps between its training and its decision."""

    label: str
    params: Params
    trained: Trained
    seconds: float
    run_id: str


@torch.no_grad()
def predicted(trial: Trial, images: torch.Tensor, frozen: FrozenFeatures) -> torch.Tensor:
    """The class the trial's best epoch gives each image. A body that did not train is the one every run of
    the comparison built, so its features of `images` are passed once for all such runs (`frozen`)."""
    model = trial.trained.model
    if body_as_built(trial.params, trial.trained.plan):
        return model.head(frozen(trial.params, model, images, torch.device("cpu"))).argmax(1)
    return trained.predict_probabilities(model, images).argmax(1)


def train_run(params: Params, label: str, train: Split, val: Split, shared: Shared, **tags: str) -> Trial:
    """One child run of the active MLflow run: train with `params` through the pipeline's own entry point."""
    tags = {"strategy": label, "seed": str(params.seed), "git_commit": shared.commit, **tags}
    with mlflow.start_run(run_name=f"{label} seed {params.seed}", nested=True, tags=tags) as run:
        tracking.log_run_params(params)
        callbacks = Callbacks(on_plan=tracking.log_plan, on_epoch=tracking.log_epoch)
        started = time.perf_counter()
        result = train_model(params, shared.classes, train, val, shared.data, callbacks, frozen=shared.frozen)
        seconds = time.perf_counter() - started
        tracking.log_metrics({"val/best_accuracy": result.best["val_accuracy"], "train/seconds": seconds})
    return Trial(label, params, result, seconds, run.info.run_id)


def scored(trial: Trial, test: TestSplits, frozen: FrozenFeatures) -> Result:
    """The trial's best epoch on the test split and its shifted copy, logged on its run."""
    accuracy = (predicted(trial, test.clean.images, frozen) == test.clean.labels).float().mean().item()
    shifted = shift.accuracies(predicted(trial, test.shifted, frozen), test.clean.labels, test.corruptions)
    with mlflow.start_run(run_id=trial.run_id, nested=True):
        tracking.log_metrics(
            {"test/accuracy": accuracy, **{f"shifted/{k.replace(' ', '_')}": v for k, v in shifted.items()}}
        )
    print(
        f"{trial.label:>20} seed {trial.params.seed}: test accuracy {accuracy:.4f} (shifted {shifted['all']:.4f}), "
        f"{trial.trained.trainable_params:,} trained, {trial.seconds:.0f} s"
    )
    return Result(
        trial.label,
        trial.params.seed,
        accuracy,
        trial.trained.best["val_accuracy"],
        trial.seconds,
        trial.trained.trainable_params,
        trial.run_id,
        shifted,
    )


def run_labels(params: Params, strategies: list[str]) -> list[tuple[str, str]]:
    """(label, weights) of each strategy's runs, plus the random-init probe when asked for."""
    runs = [(strategy, params.model.weights) for strategy in strategies]
    if params.compare.random_init_probe and params.model.weights.lower() != "none":
        runs.append((RANDOM_INIT_PROBE, "none"))
    return runs


def strategy_of(label: str) -> str:
    return "head" if label == RANDOM_INIT_PROBE else label


def grid(params: Params, splits: dict[str, Split], test: TestSplits, shared: Shared) -> list[Result]:
    """Every strategy x seed at the `compare` budget."""
    results = []
    for seed in params.compare.seeds:
        for label, weights in run_labels(params, params.compare.strategies):
            run = run_params(params, strategy_of(label), seed, weights)
            trial = train_run(run, label, splits["train"], splits["val"], shared)
            results.append(scored(trial, test, shared.frozen))
    return results


def read_verdict(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def rung_trials(params: Params, labels: list[tuple[str, str]], rung: Budget, index: int, train, val, shared: Shared):
    """Each (label, weights) once per seed of the rung at its budget, as children of the active (rung) run."""
    return {
        label: [
            train_run(
                run_params(params, strategy_of(label), seed, weights, rung.epochs),
                label,
                train,
                val,
                shared,
                rung=str(index),
            )
            for seed in params.compare.seeds[: rung.seeds]
        ]
        for label, weights in labels
    }


def race_rung(params: Params, queue: list[str], rung: Budget, index: int, train, val, shared: Shared, order, may_stop):
    """The head, then the strategies of `queue` in turn at the rung's budget (pipeline.halving.race): the trials that
    ran, the head's and the strategies' validation correctness, and the last paired test."""
    weights = params.model.weights
    trials = rung_trials(params, [("head", weights)], rung, index, train, val, shared)

    def correct_of(label: str) -> torch.Tensor:
        trials.update(rung_trials(params, [(label, weights)], rung, index, train, val, shared))
        return validation_correct(trials[label], val)

    head_correct = validation_correct(trials["head"], val)
    correct, decided = race(queue, correct_of, head_correct, order, params.compare, may_stop)
    return trials, head_correct, correct, decided


def halving(
    params: Params,
    load_train: Callable[[int | None], Split],
    splits: dict[str, Split],
    test: TestSplits,
    shared: Shared,
    verdict_file: Path,
):
    """Successive halving (pipeline.halving): the stopping rung's scored runs, the report's `halving` part and
    the stopping rung's training images. `load_train(per_class)` decodes a rung's training images."""
    budget = params.compare
    seeding = seed_from_verdict(
        budget.strategies, read_verdict(verdict_file), params.data.source, budget.halving.verdict_drop
    )
    print(seeding.note)
    contenders, waiting, rungs, budgets = seeding.first, seeding.last, [], rung_budgets(budget)
    val = splits["val"]
    for index, rung in enumerate(budgets):
        train = load_train(rung.train_per_class)
        seeds = f"{rung.seeds} seed" + ("s" if rung.seeds > 1 else "")
        name = f"rung {index}: {rung.epochs} epochs, {len(train.labels)} images, {seeds}"
        with mlflow.start_run(run_name=name, nested=True, tags={"kind": "halving rung", "rung": str(index)}) as run:
            mlflow.log_params(
                {"rung": index, "epochs": rung.epochs, "train_per_class": rung.train_per_class, "seeds": rung.seeds}
            )
            every_seed = rung.seeds == len(budget.seeds)  # a screening rung decides nothing
            queue = contenders + (waiting if every_seed else [])  # the ruled-out are not screened: they start last
            trials, head_correct, correct, decided = race_rung(
                params, queue, rung, index, train, val, shared, seeding.order, may_stop=every_seed
            )
            waiting = waiting if not every_seed else []  # they ran in this rung's race, or it decided before them
            not_run = queue[len(correct) :]
            val_accuracy = {label: runs.float().mean().item() for label, runs in correct.items()}
            final = (decided.decision == WORTH_IT and every_seed) or index == len(budgets) - 1
            kept = list(correct) if final else survivors(val_accuracy, seeding.order)
            tracking.log_metrics(
                {
                    "halving/gain": decided.gain,
                    "halving/gain_low": decided.low,
                    "halving/gain_high": decided.high,
                    "train/seconds": sum(t.seconds for runs in trials.values() for t in runs),
                    **{f"val/accuracy.{label}": value for label, value in val_accuracy.items()},
                }
            )
            mlflow.set_tags({"halving.leader": decided.leader, "halving.decision": decided.decision})
            rungs.append(
                {
                    "rung": index,
                    "epochs": rung.epochs,
                    "train_per_class": rung.train_per_class,
                    "train_images": len(train.labels),
                    "seeds": rung.seeds,
                    "strategies": list(trials),
                    "not_run": not_run,
                    "val_accuracy": {"head": head_correct.float().mean().item(), **val_accuracy},
                    "train_seconds": {label: sum(t.seconds for t in runs) for label, runs in trials.items()},
                    "paired_test": asdict(decided),
                    "kept": kept,
                    "run_id": run.info.run_id,
                }
            )
            interval = f"{decided.gain:+.1f} points [{decided.low:+.1f}, {decided.high:+.1f}]"
            print(
                f"{name}: {decided.leader} vs head {interval} on val: {decided.decision}"
                + (f"; not run: {', '.join(not_run)}" if not_run else "")
                + ("" if final else f"; kept {', '.join(kept)}")
            )
            if final:
                # the random-init probe says what pretraining brings, which no decision waits for: at the
                # answer's budget, with the first seed (the grid runs it with every seed)
                probe_budget = replace(rung, seeds=1)
                probes = rung_trials(params, run_labels(params, []), probe_budget, index, train, val, shared)
                results = [scored(t, test, shared.frozen) for runs in (trials | probes).values() for t in runs]
                stop = stop_reason(decided, rung, index, len(budgets), not_run)
                full_budget = {"epochs": budget.epochs, "train_per_class": budget.train_per_class}
                strategy, lines = recommendation(summarize(results), decided)
                return (
                    results,
                    {
                        "recommended": strategy,
                        "recommendation": lines,
                        "seeding": asdict(seeding),
                        "budget": full_budget,
                        "rungs": rungs,
                        "stop": stop,
                        "final": asdict(rung),
                    },
                    train,
                )
        contenders = kept


def validation_correct(trials: list[Trial], val: Split) -> torch.Tensor:
    """Seeds x images: whether each run's best epoch classified each validation image right, as its training saw."""
    return torch.stack([trial.trained.val_predicted == val.labels for trial in trials])


def stop_reason(test_result: PairedTest, rung: Budget, index: int, rungs: int, not_run: list[str]) -> str:
    interval = (
        f"{test_result.gain:+.1f} points [{test_result.low:+.1f}, {test_result.high:+.1f}] "
        f"at {100 * test_result.confidence:.0f}%"
    )
    over = (
        f"`{test_result.leader}` over the head on the validation split: {interval}, "
        f"{test_result.seeds} seeds x {test_result.images} images"
    )
    if test_result.decision == WORTH_IT:
        behind = f" Not run, behind it in the race: {', '.join(f'`{name}`' for name in not_run)}." if not_run else ""
        return (
            f"Stopped at rung {index} of {rungs} ({rung.epochs} epochs): fine-tuning beats the head by more than "
            f"{points(test_result.worth_it)} ({over}).{behind}"
        )
    answer = (
        f"the head is enough: fine-tuning does not beat it by {points(test_result.worth_it)}"
        if test_result.decision != UNDECIDED
        else f"undecided at {points(test_result.worth_it)}: the validation split cannot tell"
    )
    return f"Ran every rung to the full budget ({rung.epochs} epochs); {answer} ({over})."


def compare(
    params: Params, manifest: Path = MANIFEST, out_dir: Path = REPORT_DIR, verdict_file: Path = VERDICT_JSON
) -> dict:
    """Run the comparison on the prepared split of `manifest`; write and return the report."""
    tracking.check_reachable()  # before minutes of decoding and training
    started, load_before = time.perf_counter(), list(os.getloadavg())
    budget = params.compare
    rows = read_manifest(manifest)
    classes = class_names(rows)
    size, max_pixels = budget.image_size, params.data.max_image_pixels
    decoded, shards = params.data.decoded, params.data.shards
    splits = {split: load_split(rows, split, size, max_pixels, decoded, shards) for split in ("val", "test")}
    train_rows = [row for row in rows if row["split"] == "train"]

    def load_train(per_class: int | None) -> Split:
        """The seeded `per_class` training images of each class, chosen before decoding so only they are decoded."""
        chosen = cap_per_class(train_rows, per_class, params.seed)
        return load_rows(chosen, classes, size, max_pixels, decoded, "train", shards)

    test = TestSplits(splits["test"], *shift.shifted_copy(splits["test"].images, params.seed))
    tracking.use_experiment(params)
    commit = tracking.git_commit()
    shared = Shared(classes, fingerprint(manifest), commit, FrozenFeatures())
    name = "compare" if budget.method == "grid" else "compare (halving)"
    with mlflow.start_run(
        run_name=name, tags={"git_commit": commit, "kind": "compare", "method": budget.method}
    ) as parent:
        mlflow.log_params(
            tracking.flatten({"compare": budget.model_dump(mode="json"), "data": {"source": params.data.source}})
        )
        if budget.method == "grid":
            train = load_train(budget.train_per_class)
            results = grid(params, splits | {"train": train}, test, shared)
            halving_part, epochs, per_class = {}, budget.epochs, budget.train_per_class
        else:
            results, halving_part, train = halving(params, load_train, splits, test, shared, verdict_file)
            epochs, per_class = halving_part["final"]["epochs"], halving_part["final"]["train_per_class"]
        pretrained = build(params.model.backbone, params.model.weights, len(classes))
        summaries = summarize(results)
        lines = halving_part.pop("recommendation") if halving_part else recommend(summaries)
        report = {
            "setup": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "git_commit": commit,
                "parent_run_id": parent.info.run_id,
                "method": budget.method,
                "data_source": params.data.source,
                "train_images": len(train.labels),
                "train_per_class": per_class,
                "val_images": len(splits["val"].labels),
                "test_images": len(splits["test"].labels),
                "classes": len(classes),
                "image_size": size,
                "backbone": params.model.backbone,
                "weights": params.model.weights,
                "epochs": epochs,
                "head_epochs": budget.head_epochs,
                "seeds": budget.seeds,
                "worth_it": budget.worth_it,
                "seconds": time.perf_counter() - started,  # replaced below, once the report is whole
            },
            "recommendation": lines,
            "summaries": {name: asdict(s) for name, s in summaries.items()},
            "gain_per_minute": gain_per_minute(summaries),
            "shifted_test": shift_summary(results, params.seed),
            **({"halving": halving_part} if halving_part else {}),
            "batchnorm_shift": batchnorm_shift(pretrained, train.images),
            "runs": [asdict(r) for r in results],
        }
        report["setup"]["train_seconds"] = train_seconds(report)
        report["setup"]["seconds"] = time.perf_counter() - started
        # other work on the machine slows every run: the times are only comparable at a similar load
        report["setup"]["load_average"] = {
            "cores": os.cpu_count(),
            "before": load_before,
            "after": list(os.getloadavg()),
        }
        for name, s in summaries.items():
            key = re.sub(r"[^\w\-. ]", "", name)  # MLflow's allowed characters
            tracking.log_metrics({f"test/accuracy_mean.{key}": s.mean, f"test/accuracy_std.{key}": s.std})
        tracking.log_metrics(
            {"compare/seconds": report["setup"]["seconds"], "compare/train_seconds": report["setup"]["train_seconds"]}
        )
        write_json(out_dir / "compare.json", report)
        plot(summaries, out_dir / "compare.png")
        with atomic_path(out_dir / "compare.md") as partial:
            partial.write_text(markdown(report))
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
    return report


def train_seconds(report: dict) -> float:
    """Training seconds of every run the comparison made: all rungs' under halving."""
    if "halving" not in report:
        return sum(run["train_seconds"] for run in report["runs"])
    rungs = sum(sum(rung["train_seconds"].values()) for rung in report["halving"]["rungs"])
    return rungs + sum(run["train_seconds"] for run in report["runs"] if run["strategy"] == RANDOM_INIT_PROBE)


def apply(report_file: Path) -> str:
    """Set params.yaml's finetune.strategy to the one a comparison's report recommends; return it."""
    if not report_file.is_file():
        raise ConfigError(f"{report_file} not found: run `make compare` first")
    report = json.loads(report_file.read_text())
    summaries = {name: Summary(**summary) for name, summary in report["summaries"].items()}
    strategy = report["halving"]["recommended"] if "halving" in report else recommended(summaries)[0].strategy
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
    parser.add_argument(
        "--out",
        type=Path,
        default=REPORT_DIR,
        metavar="DIR",
        help="the folder of the report, e.g. reports/halving/digits for another dataset's (default: reports)",
    )
    args = parser.parse_args()
    if args.apply:
        try:
            strategy = apply(args.apply)
        except ConfigError as exc:
            sys.exit(f"not applied: {exc}")
        print(f"params.yaml: finetune.strategy: {strategy} (recommended by {args.apply}); `dvc repro` trains it")
        return
    report = compare(load_params(), out_dir=args.out)
    print("\n".join(report["recommendation"]))
    print(f"report: {args.out / 'compare.md'}")
    print("`python -m pipeline.compare --apply` sets this recommendation in params.yaml")


if __name__ == "__main__":
    main()
