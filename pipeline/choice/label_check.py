"""Whether cleanlab's label issues are wrong labels: labels flipped on purpose in a calibration case's split, and
how many of the flagged images are the flipped ones (precision) and how many flipped ones are flagged (recall),
at each case's probe accuracy. Where classes are confusable (a low probe accuracy), cleanlab flags images that are
hard, not mislabelled: the verdict counts flagged images as wrong labels only in the share this check found true
at the data's probe accuracy."""

from pathlib import Path

import numpy as np

from pipeline.choice.verdict_rule import Record
from pipeline.data.manifest import COLUMNS, read_manifest, write_manifest

PLANTED_RATE = 0.05  # of the train + val labels flipped


class LabelCheckRow(Record):
    case: str
    probe_accuracy: float  # with the flipped labels
    planted: int
    flagged: int
    precision: float
    recall: float


def flip_labels(manifest: Path, rate: float, seed: int) -> set[str]:
    """Flip `rate` of the train and val labels of a manifest file in place, each to another class; their paths."""
    rows = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    scored = [row for row in rows if row["split"] in ("train", "val")]
    classes = sorted({row["label"] for row in rows})
    flipped = set()
    for index in rng.choice(len(scored), size=max(1, round(rate * len(scored))), replace=False):
        row = scored[index]
        row["label"] = str(rng.choice([name for name in classes if name != row["label"]]))
        flipped.add(row["path"])
    write_manifest(manifest, [tuple(row[column] for column in COLUMNS) for row in rows])
    return flipped


def check_row(case: str, probe_accuracy: float, flagged: set[str], planted: set[str]) -> LabelCheckRow:
    hits = len(flagged & planted)
    return LabelCheckRow(
        case=case,
        probe_accuracy=probe_accuracy,
        planted=len(planted),
        flagged=len(flagged),
        precision=hits / len(flagged) if flagged else 1.0,
        recall=hits / len(planted),
    )


def precision_at(rows: list[LabelCheckRow], probe_accuracy: float) -> float:
    """The check's precision at this probe accuracy, interpolated between the cases (0 without a check: then no
    flagged image is taken for a wrong label)."""
    if not rows:
        return 0.0
    ordered = sorted(rows, key=lambda row: row.probe_accuracy)
    return float(np.interp(probe_accuracy, [r.probe_accuracy for r in ordered], [r.precision for r in ordered]))


def read_rows(path: Path) -> list[LabelCheckRow]:
    return (
        [LabelCheckRow.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
        if path.is_file()
        else []
    )
