"""The comparison's decision rule: which strategy to use, from the summaries over seeds alone, and the
plain-language findings the report opens with. The calibration of the verdict and halving use the same rule.

Choices are made on the validation split, so the test split stays out of them and its accuracies are not
picked for being high.
"""

from dataclasses import dataclass

from pipeline.choice.compare_report import RANDOM_INIT_PROBE, Summary

# Training times closer than this count as the same: one run's seconds vary more than that with the load.
SAME_TIME = 1.2


def apart(a: Summary, b: Summary, on_validation: bool = False) -> bool:
    """a's mean accuracy (test, or validation) is above b's by more than their spreads combined (not noise of
    the seeds)."""
    if on_validation:
        return a.val_mean - b.val_mean > (a.val_std**2 + b.val_std**2) ** 0.5
    return a.mean - b.mean > (a.std**2 + b.std**2) ** 0.5


@dataclass(frozen=True)
class Choice:
    chosen: Summary  # the strategy to use
    best: Summary  # the most accurate on validation

    def within_spread(self, summaries: dict[str, Summary]) -> list[str]:
        """The strategies the seeds cannot tell from the best, in the summaries' order."""
        return [s.strategy for s in tried(summaries).values() if not apart(self.best, s, on_validation=True)]


def tried(summaries: dict[str, Summary]) -> dict[str, Summary]:
    """The strategies a user could choose: not the random-init probe, which only says what pretraining brings."""
    return {name: s for name, s in summaries.items() if name != RANDOM_INIT_PROBE}


def choose_strategy(summaries: dict[str, Summary]) -> Choice:
    """Of the strategies within the seeds' spread of the best on validation, the most accurate of those in
    about the fastest one's training time."""
    best = max(tried(summaries).values(), key=lambda s: s.val_mean)
    tied = [s for s in tried(summaries).values() if not apart(best, s, on_validation=True)]
    fastest = min(s.train_seconds for s in tied)
    chosen = max((s for s in tied if s.train_seconds <= SAME_TIME * fastest), key=lambda s: s.val_mean)
    return Choice(chosen, best)


def findings(summaries: dict[str, Summary]) -> list[str]:
    """Plain-language findings: the strategy to use, whether the head is enough, whether pretraining helps."""
    choice = choose_strategy(summaries)
    chosen, best = choice.chosen, choice.best
    saving = best.train_seconds / chosen.train_seconds
    lines = [
        f"**Use `{chosen.strategy}`**: {chosen.val_mean:.3f} ± {chosen.val_std:.3f} validation accuracy, "
        + (
            "the best of all"
            if chosen is best
            else f"within the seeds' spread of the best, `{best.strategy}` ({best.val_mean:.3f} ± "
            f"{best.val_std:.3f}), "
            + (f"at {saving:.1f}× less training time" if saving >= SAME_TIME else "in about the same training time")
        )
        + f"; {chosen.mean:.3f} ± {chosen.std:.3f} on the test split."
    ]
    head, full = tried(summaries).get("head"), tried(summaries).get("full")
    if head and full:
        verdict = "enough" if not apart(full, head, on_validation=True) else "not enough"
        lines.append(
            f"Training the head is {verdict} here: it reaches {100 * head.mean / full.mean:.1f}% of full "
            f"fine-tuning's test accuracy ({head.mean:.3f} vs {full.mean:.3f}) at "
            f"{full.train_seconds / head.train_seconds:.1f}× less training time and "
            f"{full.trainable_params / head.trainable_params:.0f}× fewer trained parameters."
        )
    return lines + pretraining_findings(summaries)


def pretraining_findings(summaries: dict[str, Summary]) -> list[str]:
    head, random_probe = summaries.get("head"), summaries.get(RANDOM_INIT_PROBE)
    if not (head and random_probe):
        return []
    if apart(head, random_probe):
        return [
            f"Pretraining helps on this data: a linear probe reaches {head.mean:.3f} on the pretrained "
            f"features against {random_probe.mean:.3f} on random-init ones."
        ]
    return [
        f"The pretrained features are no better than random ones on this data (linear probe "
        f"{head.mean:.3f} vs {random_probe.mean:.3f}): it is far from the pretraining data, and what "
        "the network learns here it learns from this data, not from pretraining."
    ]
