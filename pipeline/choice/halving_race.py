"""`compare.method: halving`, run: each rung's race under an MLflow run of its own, until the paired test of
pipeline.choice.halving decides or the full budget is reached. The decisions themselves are in
pipeline.choice.halving; this module trains and records."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from pipeline.choice.compare_report import Budget, FullBudget, Halving, PairedTest, Result, Rung, Seeding, summarize
from pipeline.choice.halving import (
    UNDECIDED,
    WORTH_IT,
    points,
    race,
    recommendation,
    rung_budgets,
    seed_from_verdict,
    survivors,
)
from pipeline.choice.trials import (
    Shared,
    TestSplits,
    Trial,
    run_labels,
    run_params,
    scored,
    strategy_of,
    train_run,
    validation_correct,
)
from pipeline.choice.verdict_report import VerdictReport
from pipeline.config import Params
from pipeline.data.splits import Split
from pipeline.tracking import runs


@dataclass
class HalvingOutcome:
    results: list[Result]  # the stopping rung's runs, scored on test
    halving: Halving  # the report's part
    recommendation: list[str]
    train: Split  # the stopping rung's training images


@dataclass
class RungRun:
    """What one rung ran and decided."""

    rung: Rung
    trials: dict[str, list[Trial]]
    decided: PairedTest
    final: bool  # the answer is in, or the budget is spent


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
    """The head, then the strategies of `queue` in turn at the rung's budget (pipeline.choice.halving.race): the
    trials that ran, the head's and the strategies' validation correctness, and the last paired test."""
    weights = params.model.weights
    trials = rung_trials(params, [("head", weights)], rung, index, train, val, shared)

    def correct_of(label: str) -> torch.Tensor:
        trials.update(rung_trials(params, [(label, weights)], rung, index, train, val, shared))
        return validation_correct(trials[label], val)

    head_correct = validation_correct(trials["head"], val)
    correct, decided = race(queue, correct_of, head_correct, order, params.compare, may_stop)
    return trials, head_correct, correct, decided


def rung_name(index: int, rung: Budget, train: Split) -> str:
    seeds = f"{rung.seeds} seed" + ("s" if rung.seeds > 1 else "")
    return f"rung {index}: {rung.epochs} epochs, {len(train.labels)} images, {seeds}"


def run_rung(
    params: Params, index: int, rung: Budget, queue: list[str], last: bool, seeding: Seeding, train, val, shared
):
    """One rung's race, logged on the active (rung) run; `last`: the rung at the full budget."""
    every_seed = rung.seeds == len(params.compare.seeds)  # a screening rung decides nothing
    mlflow.log_params(
        {"rung": index, "epochs": rung.epochs, "train_per_class": rung.train_per_class, "seeds": rung.seeds}
    )
    trials, head_correct, correct, decided = race_rung(
        params, queue, rung, index, train, val, shared, seeding.order, may_stop=every_seed
    )
    val_accuracy = {label: runs_correct.float().mean().item() for label, runs_correct in correct.items()}
    final = (decided.decision == WORTH_IT and every_seed) or last
    kept = list(correct) if final else survivors(val_accuracy, seeding.order)
    train_seconds = {label: sum(t.seconds for t in trials_of) for label, trials_of in trials.items()}
    runs.log_metrics(
        {
            "halving/gain": decided.gain,
            "halving/gain_low": decided.low,
            "halving/gain_high": decided.high,
            "train/seconds": sum(train_seconds.values()),
            **{f"val/accuracy.{label}": value for label, value in val_accuracy.items()},
        }
    )
    mlflow.set_tags({"halving.leader": decided.leader, "halving.decision": decided.decision})
    recorded = Rung(
        rung=index,
        epochs=rung.epochs,
        train_per_class=rung.train_per_class,
        train_images=len(train.labels),
        seeds=rung.seeds,
        strategies=list(trials),
        not_run=queue[len(correct) :],
        val_accuracy={"head": head_correct.float().mean().item(), **val_accuracy},
        train_seconds=train_seconds,
        paired_test=decided,
        kept=kept,
        run_id=mlflow.active_run().info.run_id,
    )
    interval = f"{decided.gain:+.1f} points [{decided.low:+.1f}, {decided.high:+.1f}]"
    print(
        f"{rung_name(index, rung, train)}: {decided.leader} vs head {interval} on val: {decided.decision}"
        + (f"; not run: {', '.join(recorded.not_run)}" if recorded.not_run else "")
        + ("" if final else f"; kept {', '.join(kept)}")
    )
    return RungRun(recorded, trials, decided, final)


def halving(
    params: Params,
    load_train: Callable[[int | None], Split],
    val: Split,
    test: TestSplits,
    shared: Shared,
    verdict: Path,
) -> HalvingOutcome:
    """Successive halving (pipeline.choice.halving) up to the rung that answers. `load_train(per_class)` decodes
    a rung's training images; `verdict` is the verdict report that seeds the order, if there is one."""
    budget = params.compare
    report = VerdictReport.read(verdict) if verdict.is_file() else None
    seeding = seed_from_verdict(budget.strategies, report, params.data.source, budget.halving.verdict_drop)
    print(seeding.note)
    contenders, waiting, rungs, budgets = seeding.first, seeding.last, [], rung_budgets(budget)
    for index, rung in enumerate(budgets):
        train = load_train(rung.train_per_class)
        every_seed = rung.seeds == len(budget.seeds)
        queue = contenders + (waiting if every_seed else [])  # the ruled-out are not screened: they start last
        tags = {"kind": "halving rung", "rung": str(index)}
        with mlflow.start_run(run_name=rung_name(index, rung, train), nested=True, tags=tags):
            ran = run_rung(params, index, rung, queue, index == len(budgets) - 1, seeding, train, val, shared)
            rungs.append(ran.rung)
            if ran.final:  # its runs, scored, and the random-init probe are children of this rung's run
                return conclude(params, ran, rungs, seeding, rung, len(budgets), train, val, test, shared)
        waiting = waiting if not every_seed else []  # they ran in this rung's race, or it decided before them
        contenders = ran.rung.kept
    raise AssertionError("the last rung is always final")


def conclude(
    params: Params,
    ran: RungRun,
    rungs: list[Rung],
    seeding: Seeding,
    rung: Budget,
    count: int,
    train,
    val,
    test,
    shared,
):
    """The stopping rung's runs scored on test, with the random-init probe, which no decision waits for: it says
    what pretraining brings, at the answer's budget, with the first seed (the grid runs it with every seed)."""
    probes = rung_trials(
        params, run_labels(params, []), rung.model_copy(update={"seeds": 1}), ran.rung.rung, train, val, shared
    )
    results = [scored(t, test, shared.frozen) for trials in (ran.trials | probes).values() for t in trials]
    strategy, lines = recommendation(summarize(results), ran.decided)
    halving_part = Halving(
        recommended=strategy,
        seeding=seeding,
        budget=FullBudget(epochs=params.compare.epochs, train_per_class=params.compare.train_per_class),
        rungs=rungs,
        stop=stop_reason(ran.decided, rung, ran.rung.rung, count, ran.rung.not_run),
        final=rung,
    )
    return HalvingOutcome(results, halving_part, lines, train)


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
