"""The verdict itself: the fitted rule's expected gain, the answer to "is the head enough?", where to tune when
it is not, how sure, and what to do when the data lies outside the calibration."""

from pipeline.choice.verdict_rule import FittedRule, Record, Scores, certainty_of, head_enough_probability
from pipeline.choice.where_to_tune import where_to_tune

HEAD_IS_ENOUGH = "the head is enough"
EVERYTHING = "fine-tune everything"
HALVING_ADVICE = (
    "measure instead of trusting the rule: `make compare` with `compare.method: halving` stops once the answer is clear"
)


class Verdict(Record):
    decision: str  # HEAD_IS_ENOUGH, "fine-tune the last N blocks" or EVERYTHING
    strategy: str  # a name of pipeline.finetune.strategies.STRATEGIES
    unfreeze_blocks: int | None  # partial's finetune.unfreeze_blocks
    blocks: list[str]  # the blocks to tune, input to output
    expected_gain: float  # points over the head
    gain_sd: float  # points: the rule's error on families left out of its fit (doubled outside the calibration)
    confidence: float  # probability that the gain is on the decided side of worth_it
    certainty: str  # sure, fairly sure, unsure
    rule: str  # which candidate rule (pipeline.choice.verdict_rule.RULES)
    where: str  # why these blocks
    outside: list[str]  # each way the data lies outside the calibration, in plain words
    advice: str | None  # what to do when the verdict is not to be trusted


def decide(
    rule: FittedRule,
    scores: Scores,
    epochs: int,
    blocks: list[str],
    settings: tuple[float, float, int],
    outside: list[str],
) -> Verdict:
    """`settings`: verdict.worth_it, verdict.shift_threshold and finetune.unfreeze_blocks."""
    worth_it, shift_threshold, unfreeze_blocks = settings
    gain = rule.gain(scores, epochs)
    sd = rule.gain_sd * (2 if outside else 1)  # a rule asked about data unlike its cases errs more
    head_enough = head_enough_probability(gain, sd, worth_it)
    confidence = head_enough if gain < worth_it else 1 - head_enough
    common = {
        "expected_gain": gain,
        "gain_sd": sd,
        "confidence": confidence,
        "certainty": "unsure" if outside else certainty_of(confidence),
        "rule": rule.name,
        "outside": outside,
        "advice": HALVING_ADVICE if outside else None,
    }
    if gain < worth_it:
        reason = "nothing to tune: the head is enough"
        return Verdict(
            decision=HEAD_IS_ENOUGH, strategy="head", unfreeze_blocks=None, blocks=[], where=reason, **common
        )
    where = where_to_tune(scores, blocks, min(unfreeze_blocks, len(blocks)), shift_threshold, worth_it)
    decision = EVERYTHING if where.strategy == "full" else f"fine-tune the last {len(where.blocks)} blocks"
    return Verdict(
        decision=decision.replace("last 1 blocks", "last block"),
        strategy=where.strategy,
        unfreeze_blocks=where.unfreeze_blocks,
        blocks=where.blocks,
        where=where.reason,
        **common,
    )
