"""How the verdict's candidate rules fare on data they were not fitted on: each calibration family (all its
cases together) left out of the fit in turn, every case predicted by a rule fitted on the other families.

Per rule: the root mean square error of the predicted gain, with the standard error of its mean square, and for
"is the head enough?" (predicted gain below worth_it) the balanced accuracy and the ROC AUC; beside them the same
figures of the constant answer (the training families' mean gain), so that what a rule adds over a constant is
plain. The rule kept is the simplest within one standard error of the lowest error.
"""

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from pipeline.choice.verdict_rule import RULES, Case, Record, certainty_of, fit, head_enough_probability
from pipeline.choice.where_to_tune import where_to_tune
from pipeline.config import ConfigError

CONSTANT = "constant"  # the training families' mean gain, whatever the data


class RuleScore(Record):
    name: str
    features: tuple[str, ...]
    rmse: float  # points, held out
    mse_se: float  # standard error of the mean squared error, over cases
    balanced_accuracy: float  # of "is the head enough?", held out
    roc_auc: float | None  # None when every case has the same answer

    @property
    def rmse_se(self) -> float:
        """The standard error of the RMSE, from its mean square's (the delta method: d sqrt(x) = dx / 2 sqrt(x))."""
        return self.mse_se / (2 * max(self.rmse, 1e-9))


class CaseCheck(Record):
    name: str
    family: str
    measured_gain: float
    predicted_gain: float  # by the chosen rule fitted without the case's family
    head_enough: bool  # measured: gain below worth_it
    predicted_head_enough: bool
    confidence: float  # the held-out verdict's stated probability of its answer
    strategy: str  # the held-out verdict's strategy (the head, or where to tune)
    within_spread: list[str]  # measured: the strategies the seeds cannot tell from the best


class ReliabilityBin(Record):
    certainty: str  # unsure, fairly sure, sure
    cases: int
    stated: float  # mean stated confidence
    right: float  # share of those cases answered right


class Validation(Record):
    cases: int
    families: list[str]
    head_enough_share: float
    rules: list[RuleScore]  # every candidate, simplest first
    constant: RuleScore
    chosen: str
    checks: list[CaseCheck]  # per case, the chosen rule held out
    reliability: list[ReliabilityBin]
    strategy_agrees: float  # share of cases whose held-out verdict's strategy is within the seeds' spread of the best
    constant_strategy: str  # the one strategy most often within the spread: what a constant answer would say
    constant_strategy_agrees: float

    @property
    def chosen_score(self) -> RuleScore:
        return next(score for score in self.rules if score.name == self.chosen)


def refuse_twins(cases: list[Case]) -> None:
    """Two cases of the same data, backbone, weights, size and budget: one would be in the other's fit."""
    counts = Counter(case.setting for case in cases)
    twins = [case.name for case in cases if counts[case.setting] > 1]
    if twins:
        raise ConfigError(
            f"calibration: twin cases (same data, backbone, weights, size and budget): {', '.join(twins)}"
        )


def family_folds(cases: list[Case]) -> Iterator[tuple[str, list[Case], list[Case]]]:
    """(family, the other families' cases, the family's cases), each family once."""
    for family in sorted({case.family for case in cases}):
        yield family, [c for c in cases if c.family != family], [c for c in cases if c.family == family]


def held_out_gains(rule: str, cases: list[Case]) -> dict[str, float]:
    """Case name -> the gain predicted by `rule` fitted on the other families (CONSTANT: their mean gain)."""
    predicted = {}
    for _, train, test in family_folds(cases):
        if rule == CONSTANT:
            mean = float(np.mean([case.gain for case in train]))
            predicted |= {case.name: mean for case in test}
        else:
            fitted = fit(rule, train)
            predicted |= {case.name: fitted.gain(case.scores, case.epochs) for case in test}
    return predicted


def score(rule: str, cases: list[Case], worth_it: float) -> RuleScore:
    predicted = held_out_gains(rule, cases)
    errors = np.array([predicted[case.name] - case.gain for case in cases])
    measured = np.array([case.gain < worth_it for case in cases])
    said = np.array([predicted[case.name] < worth_it for case in cases])
    auc = roc_auc_score(measured, [-predicted[case.name] for case in cases]) if len(set(measured)) == 2 else None
    return RuleScore(
        name=rule,
        features=RULES.get(rule, ()),
        rmse=float(math.sqrt(np.mean(errors**2))),
        mse_se=float(np.std(errors**2, ddof=1) / math.sqrt(len(errors))),
        balanced_accuracy=float(balanced_accuracy_score(measured, said))
        if len(set(measured)) == 2
        else float(np.mean(measured == said)),
        roc_auc=None if auc is None else float(auc),
    )


def simplest_within_one_se(scores: list[RuleScore]) -> str:
    """The first (simplest) rule whose mean squared error is within one standard error of the lowest."""
    best = min(scores, key=lambda s: s.rmse)
    return next(s.name for s in scores if s.rmse**2 <= best.rmse**2 + best.mse_se)


def case_blocks(case: Case) -> list[str]:
    return list(case.scores.block_probe_accuracy) or list(case.scores.batchnorm_shift)


def checks_of(rule: str, sd: float, cases: list[Case], settings: tuple[float, float, int]) -> list[CaseCheck]:
    """Per case, what the verdict would have said with the rule fitted without the case's family."""
    worth_it, shift_threshold, unfreeze_blocks = settings
    predicted = held_out_gains(rule, cases)
    checks = []
    for case in cases:
        p_head = head_enough_probability(predicted[case.name], sd, worth_it)
        said = predicted[case.name] < worth_it
        blocks = case_blocks(case)
        where = where_to_tune(case.scores, blocks, min(unfreeze_blocks, len(blocks)), shift_threshold, worth_it)
        checks.append(
            CaseCheck(
                name=case.name,
                family=case.family,
                measured_gain=case.gain,
                predicted_gain=predicted[case.name],
                head_enough=case.gain < worth_it,
                predicted_head_enough=said,
                confidence=p_head if said else 1 - p_head,
                strategy="head" if said else where.strategy,
                within_spread=case.measured_within_spread,
            )
        )
    return checks


def reliability(checks: list[CaseCheck]) -> list[ReliabilityBin]:
    """Stated confidence against how often the answer was right, per certainty the verdict would say."""
    bins = []
    for certainty in ("unsure", "fairly sure", "sure"):
        members = [c for c in checks if certainty_of(c.confidence) == certainty]
        if members:
            right = np.mean([c.head_enough == c.predicted_head_enough for c in members])
            stated = np.mean([c.confidence for c in members])
            bins.append(
                ReliabilityBin(certainty=certainty, cases=len(members), stated=float(stated), right=float(right))
            )
    return bins


def validate(cases: list[Case], settings: tuple[float, float, int]) -> Validation:
    """`settings`: verdict.worth_it, verdict.shift_threshold and finetune.unfreeze_blocks."""
    worth_it = settings[0]
    refuse_twins(cases)
    families = sorted({case.family for case in cases})
    if len(families) < 2:
        raise ConfigError(f"calibration: cases of {len(families)} family; leaving one out needs at least two")
    scores = [score(rule, cases, worth_it) for rule in RULES]
    chosen = simplest_within_one_se(scores)
    sd = next(score.rmse for score in scores if score.name == chosen)
    checks = checks_of(chosen, sd, cases, settings)
    constant, agrees = Counter(s for c in checks for s in c.within_spread).most_common(1)[0]
    return Validation(
        cases=len(cases),
        families=families,
        head_enough_share=float(np.mean([case.gain < worth_it for case in cases])),
        rules=scores,
        constant=score(CONSTANT, cases, worth_it),
        chosen=chosen,
        checks=checks,
        reliability=reliability(checks),
        strategy_agrees=float(np.mean([c.strategy in c.within_spread for c in checks])),
        constant_strategy=constant,
        constant_strategy_agrees=agrees / len(checks),
    )
