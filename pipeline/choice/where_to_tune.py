"""Where to tune, once fine-tuning is worth it: the last `finetune.unfreeze_blocks` blocks (`partial`) or every
block (`full`), for any architecture.

With BatchNorm, its shift says whether the early blocks see what they saw in pretraining: from the first block
whose inputs are shifted by `verdict.shift_threshold` standard deviations or more, everything is tuned; when only
the top blocks are shifted (or none), `partial`. Without BatchNorm (a ViT), the per-block probes say it: when the
features below the tuned blocks already classify within `verdict.worth_it` points of the last layer's, the
early blocks hold what the task needs and the top ones are retuned (`partial`); otherwise `full`.
Checked against the calibration grids, which measure `partial` at the default depth beside `full`.
"""

from pipeline.choice.verdict_rule import Record, Scores


class Where(Record):
    strategy: str  # partial or full
    unfreeze_blocks: int | None  # partial's
    blocks: list[str]  # the tuned blocks, input to output
    reason: str


def where_to_tune(scores: Scores, blocks: list[str], unfreeze_blocks: int, shift_threshold: float, worth_it: float):
    """`blocks`: every block's label, input to output; `unfreeze_blocks`: partial's depth."""
    top = blocks[-unfreeze_blocks:]
    if scores.batchnorm_shift:
        shifts = list(scores.batchnorm_shift.items())
        shifted = [label for label, value in shifts if value >= shift_threshold]
        first = shifted[0] if shifted else None
        if first is None or first in top:
            where = "only in the top blocks" if first else "in no block"
            reason = f"BatchNorm inputs shifted by {shift_threshold:g} std or more {where}"
            return Where(strategy="partial", unfreeze_blocks=len(top), blocks=top, reason=reason)
        reason = f"BatchNorm inputs shifted from {first} ({scores.batchnorm_shift[first]:.2f} std)"
        return Where(strategy="full", unfreeze_blocks=None, blocks=blocks[blocks.index(first) :], reason=reason)
    probes = scores.block_probe_accuracy
    below = [label for label in blocks[:-unfreeze_blocks] if label in probes]
    if below and 100 * (scores.probe_accuracy - probes[below[-1]]) <= worth_it:
        reason = f"the features below the top blocks ({below[-1]}) classify within {worth_it:g} points of the last"
        return Where(strategy="partial", unfreeze_blocks=len(top), blocks=top, reason=reason)
    return Where(strategy="full", unfreeze_blocks=None, blocks=blocks, reason="the top blocks add to every lower one")
