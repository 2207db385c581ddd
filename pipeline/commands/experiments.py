"""`make experiments`: the DVC experiments as one table that fits the terminal, strategy and test accuracy first.

    python -m pipeline.commands.experiments          # COLUMNS=80 or the terminal's width; 80 when piped
    python -m pipeline.commands.experiments -A       # any other `dvc exp show` option is passed on

`dvc exp show` drops the columns that do not fit from the left, the strategy first; this reads its CSV and
shortens the data folder, backbone and experiment names, then drops the least telling columns, before it ever
touches strategy and accuracy.
"""

import csv
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

# `dvc exp show` columns, by their names in params.yaml and metrics/*.json.
KEPT = (
    "Experiment",
    "rev",  # the workspace's and the commits' name, where Experiment is empty
    "Created",
    "data.source",
    "model.backbone",
    "finetune.strategy",
    "accuracy",
    "trainable_params",
)
GAP = "  "
SHORTEST = 12  # a shortened name keeps this many characters (its end marked by `…`), and its header whole


@dataclass(frozen=True)
class ExperimentRow:
    """One row of the table, in column order: what is most telling first, what goes first last."""

    strategy: str
    accuracy: str
    experiment: str
    trained_params: str  # trained parameters
    data: str
    backbone: str
    created: str

    @classmethod
    def of(cls, shown: dict[str, str]) -> "ExperimentRow":
        """A row of `dvc exp show --csv`; a column no experiment has is missing from it, an empty cell is ''."""
        cell = {name: shown.get(name) or "" for name in KEPT}
        accuracy, params = cell["accuracy"], cell["trainable_params"]
        return cls(
            strategy=cell["finetune.strategy"],
            accuracy=f"{float(accuracy):.4f}" if accuracy else "",
            experiment=cell["Experiment"] or cell["rev"],
            trained_params=f"{int(float(params)):,}" if params else "",
            data=Path(cell["data.source"]).name,
            backbone=cell["model.backbone"],
            created=cell["Created"][:16].replace("T", " "),  # to the minute
        )


HEADERS = ExperimentRow("strategy", "accuracy", "experiment", "trained", "data", "backbone", "created")
SHORTENED = ("data", "backbone", "experiment")  # the longest of these is cut first
RIGHT_ALIGNED = {"accuracy", "trained_params"}  # numbers


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fitted_widths(rows: list[ExperimentRow], width: int) -> dict[str, int]:
    """Each shown column's width: names shortened, then the last columns dropped, until the table fits."""
    names = [f.name for f in fields(ExperimentRow)]
    widths = {name: max(len(getattr(row, name)) for row in [HEADERS, *rows]) for name in names}

    def total() -> int:
        return sum(widths.values()) + len(GAP) * (len(widths) - 1)

    def shortest(name: str) -> int:
        return max(SHORTEST, len(getattr(HEADERS, name)))

    while total() > width:
        cuttable = [name for name in SHORTENED if name in widths and widths[name] > shortest(name)]
        if cuttable:
            longest = max(cuttable, key=widths.get)
            widths[longest] = max(shortest(longest), widths[longest] - (total() - width))
        elif len(widths) > 2:  # strategy and accuracy stay, however narrow the terminal
            widths.popitem()
        else:
            break
    return widths


def table(rows: list[ExperimentRow], width: int) -> str:
    widths = fitted_widths(rows, width)

    def line(row: ExperimentRow) -> str:
        cells = ((name, shorten(getattr(row, name), w), w) for name, w in widths.items())
        return GAP.join(c.rjust(w) if name in RIGHT_ALIGNED else c.ljust(w) for name, c, w in cells).rstrip()

    return "\n".join(line(row) for row in [HEADERS, *rows])


def shown_rows(dvc_args: list[str]) -> list[ExperimentRow]:
    keep = "^(" + "|".join(name.replace(".", r"\.") for name in KEPT) + ")$"
    command = ["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", keep, *dvc_args]
    shown = subprocess.run(command, capture_output=True, text=True)
    if shown.returncode != 0:
        sys.exit(f"experiments: {' '.join(command)} failed:\n{shown.stderr.strip()}")
    return [ExperimentRow.of(row) for row in csv.DictReader(io.StringIO(shown.stdout))]


def main(argv: list[str] | None = None) -> None:
    rows = shown_rows(sys.argv[1:] if argv is None else argv)
    print(table(rows, shutil.get_terminal_size((80, 24)).columns))


if __name__ == "__main__":
    main()
