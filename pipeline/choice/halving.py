"""`compare.method: halving`: the decisions of successive halving, apart from the training itself (which is
pipeline.choice.halving_race's): the rungs' budgets, the paired test against the head, the race, the
verdict's seeding and the recommendation. How and why: docs/strategies.md#stopping-when-the-answer-is-clear.
"""

import math
from collections.abc import Callable
from pathlib import Path

import torch
from scipy.stats import ttest_1samp

from pipeline.choice.compare_report import Budget, PairedTest, Seeding, Summary
from pipeline.choice.comparison_rule import choose_strategy, findings
from pipeline.choice.verdict_report import VerdictReport
from pipeline.config import CompareConfig

WORTH_IT = "worth it"
NOT_WORTH_IT = "not worth it"
UNDECIDED = "undecided"

# What each verdict strategy (pipeline.choice.verdict_rule) says against the others. `full`: every block is
# shifted, so strategies that leave most of the backbone frozen are the least likely to pay. `partial`:
# the early blocks are not shifted, so tuning everything spends time where nothing is to gain. `head`:
# fine-tuning is not expected to pay, least of all the costliest strategies.
RULED_OUT = {
    "full": ("partial", "auto", "norm"),
    "partial": ("full", "lp-ft"),
    "head": ("full", "lp-ft"),
}


def rung_budgets(budget: CompareConfig) -> list[Budget]:
    """The rungs' budgets: the first, doubled in epochs and images per class until the `compare` budget;
    the first with `first_seeds` seeds unless it is the only one, every other with all of them."""
    epochs, per_class = budget.halving.first_epochs, budget.halving.first_train_per_class
    rungs = []
    while True:
        capped_per_class = per_class if budget.train_per_class is None else min(per_class, budget.train_per_class)
        rungs.append(
            Budget(epochs=min(epochs, budget.epochs), train_per_class=capped_per_class, seeds=len(budget.seeds))
        )
        if epochs >= budget.epochs and budget.train_per_class is None:
            # doubling images per class past the largest class changes nothing: the last rung takes them all
            rungs[-1] = Budget(epochs=budget.epochs, train_per_class=None, seeds=len(budget.seeds))
            break
        if epochs >= budget.epochs and capped_per_class == budget.train_per_class:
            break
        epochs, per_class = epochs * 2, per_class * 2
    if len(rungs) > 1:
        rungs[0] = rungs[0].model_copy(update={"seeds": min(budget.halving.first_seeds, len(budget.seeds))})
    return rungs


def paired_test(
    leader: str, leader_correct: torch.Tensor, head_correct: torch.Tensor, worth_it: float, confidence: float
) -> PairedTest:
    """Per-image correctness (seeds x images, same seeds and images for both) of the leader and the head.

    Each image's difference is averaged over the seeds first, so the interval's spread holds both which
    images were drawn and how the seeds fell; the interval is Student's t over those per-image differences.
    Worth it when the interval lies above `worth_it` points, not worth it when it lies below."""
    differences = (leader_correct.float() - head_correct.float()).mean(0).double().numpy()
    images, gain = len(differences), 100 * float(differences.mean())
    if images > 1 and differences.std() > 0:
        interval = ttest_1samp(differences, 0.0).confidence_interval(confidence)
        low, high = 100 * float(interval.low), 100 * float(interval.high)
    else:  # one image, or every image alike: no spread to estimate
        low, high = (gain, gain) if images > 1 else (-math.inf, math.inf)
    decision = WORTH_IT if low > worth_it else NOT_WORTH_IT if high < worth_it else UNDECIDED
    return PairedTest(
        leader=leader,
        gain=gain,
        low=low,
        high=high,
        confidence=confidence,
        images=images,
        seeds=len(leader_correct),
        worth_it=worth_it,
        decision=decision,
    )


def ranked(val_accuracy: dict[str, float], order: list[str]) -> list[str]:
    """Strategies by mean validation accuracy, best first; a tie goes to the earlier in `order`."""
    return sorted(val_accuracy, key=lambda name: (-val_accuracy[name], order.index(name)))


def survivors(val_accuracy: dict[str, float], order: list[str]) -> list[str]:
    """The better half (rounded up) of the strategies, best first."""
    return ranked(val_accuracy, order)[: math.ceil(len(val_accuracy) / 2)]


def race(
    queue: list[str],
    correct_of: Callable[[str], torch.Tensor],
    head_correct: torch.Tensor,
    order: list[str],
    budget: CompareConfig,
    may_stop: bool,
) -> tuple[dict[str, torch.Tensor], PairedTest]:
    """Run the strategies of `queue` in turn (`correct_of` trains one at the rung's seeds and gives its per-image
    validation correctness), each followed by the paired test of the leader so far against the head; stop at
    the first "worth it" when `may_stop`. The correctness of those that ran, and the last test."""
    correct: dict[str, torch.Tensor] = {}
    for name in queue:
        correct[name] = correct_of(name)
        leader = ranked({label: runs.float().mean().item() for label, runs in correct.items()}, order)[0]
        decided = paired_test(leader, correct[leader], head_correct, budget.worth_it, budget.halving.confidence)
        if may_stop and decided.decision == WORTH_IT:
            break
    return correct, decided


def seed_from_verdict(
    strategies: list[str], verdict_report: VerdictReport | None, data_source: str, drop_from: float
) -> Seeding:
    """Order `strategies` (the head excluded: it always runs) by a verdict report on the same data; one on
    other data says nothing about this data and is ignored."""
    tuned = [name for name in strategies if name != "head"]

    def seeding(first: list[str], note: str, last=(), dropped=()) -> Seeding:
        return Seeding(first=first, last=list(last), dropped=list(dropped), note=note)

    if verdict_report is None:
        return seeding(tuned, "no verdict report: the strategies start in compare.strategies' order")
    if Path(verdict_report.setup.data_source).resolve() != Path(data_source).resolve():
        return seeding(tuned, f"the verdict report is of {verdict_report.setup.data_source}, not of this data: ignored")
    verdict = verdict_report.verdict
    ruled_out = [name for name in tuned if name in RULED_OUT[verdict.strategy]]
    favoured = [name for name in tuned if name == verdict.strategy]
    rest = [name for name in tuned if name not in ruled_out and name not in favoured]
    said = f"verdict: {verdict.decision} ({verdict.certainty}, {100 * verdict.confidence:.0f}%); "
    if not ruled_out:
        return seeding(favoured + rest, said + "it rules out none of those compared")
    if len(ruled_out) == len(tuned):  # never all of them: the comparison is there to check the verdict
        return seeding(ruled_out, said + "it rules out every strategy compared: all run, to check it")
    if verdict.confidence >= drop_from:
        note = f"ruled out and not run (confidence from {100 * drop_from:.0f}%): {', '.join(ruled_out)}"
        return seeding(favoured + rest, said + note, dropped=ruled_out)
    return seeding(favoured + rest, said + f"ruled out, started last: {', '.join(ruled_out)}", last=ruled_out)


def points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def recommendation(summaries: dict[str, Summary], decided: PairedTest) -> tuple[str, list[str]]:
    """The strategy halving recommends and the report's lines. A decided paired test answers: it pairs every
    validation image across the seeds, where the grid's rule (means apart by more than the seeds' spread)
    has three numbers a side; undecided, the grid's rule on the stopping rung's test accuracies answers."""
    lines = findings(summaries)
    if decided.decision == UNDECIDED:
        note = " (The paired test could not decide: this is the grid's rule, on the seeds' spread.)"
        return choose_strategy(summaries).chosen.strategy, [lines[0] + note, *lines[1:]]
    strategy = decided.leader if decided.decision == WORTH_IT else "head"
    chosen, head = summaries[strategy], summaries["head"]
    paired = (
        f"{decided.gain:+.1f} points ({decided.low:+.1f} to {decided.high:+.1f} at {100 * decided.confidence:.0f}%) "
        f"on the validation split, paired over {decided.seeds} seeds x {decided.images} images"
    )
    test = f"Test accuracy: {chosen.mean:.3f} ± {chosen.std:.3f}" + (
        f" against the head's {head.mean:.3f} ± {head.std:.3f}." if strategy != "head" else "."
    )
    first = (
        f"**Use `{strategy}`**: it beats the head by more than compare.worth_it ({points(decided.worth_it)}): "
        f"{paired}. "
        if decided.decision == WORTH_IT
        else f"**Use `head`**: the leading fine-tuning, `{decided.leader}`, does not beat it by compare.worth_it "
        f"({points(decided.worth_it)}) at the full budget: {paired}. "
    )
    return strategy, [first + test, *lines[1:]]
