"""What the MLflow UI shows of a dataset's experiment before any click: its description, a table of the
strategies tried on that data, and a saved view of its runs sorted by test accuracy with the columns that
answer "which strategy?".

The description is the experiment's `mlflow.note.content` tag, rebuilt from the experiment's runs (not appended
to) by evaluate, once a test accuracy is known, and by the verdict. The view is MLflow 3's shared view state: an
experiment tag `mlflow.sharedViewState.<key>` that the runs page applies when its URL carries
`viewStateShareKey=<key>` (and no sort or filter of its own), and lists under its saved views.
"""

import json
import urllib.parse
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run

NOTE_TAG = "mlflow.note.content"
VIEW_KEY = "strategies"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# The runs page's column keys (also its table's column ids): `metrics.<name>` and `params.<name>` with the name
# in backticks.
ACCURACY = "metrics.`test/accuracy`"
SHOWN_TRAININGS = 50  # the best ones: an experiment tag holds at most 20,000 characters
VIEW_COLUMNS = (
    "params.`finetune.strategy`",
    ACCURACY,
    "metrics.`model/trainable_params`",
    "metrics.`train/seconds`",
)
# Test accuracy first among the metrics (the table puts metrics, then params, each group alphabetical). Few
# enough columns, without the Dataset one (every run's is this data), to stay in sight beside the sidebar and
# the assistant's panel in a window 1600 pixels wide.
COLUMN_ORDER = (
    "attributes.`Run Name`",
    "runDateAndNestInfo",
    "duration",
    ACCURACY,
    "metrics.`model/trainable_params`",
    "metrics.`train/seconds`",
    "params.`finetune.strategy`",
)


def view_tag() -> dict[str, str]:
    """The experiment tag of the saved view: an envelope (name, times, state as a JSON string) as the UI saves it."""
    state = {
        "orderByKey": ACCURACY,
        "orderByAsc": False,
        "selectedColumns": list(VIEW_COLUMNS),
        "columnOrder": list(COLUMN_ORDER),
    }
    envelope = {"name": "strategies by test accuracy", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)}
    return {VIEW_TAG: json.dumps(envelope)}


def runs_link(base_url: str, experiment_id: str) -> str:
    """The runs page of `experiment_id` opened on the saved view, in the sidebar's machine-learning mode (the
    UI opens an experiment without a kind on GenAI traces)."""
    query = urllib.parse.urlencode({"viewStateShareKey": VIEW_KEY, "workflowType": "machine_learning"})
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


@dataclass(frozen=True)
class StrategyRow:
    """One run of the experiment as a row of its description: a training evaluated on the test split, or a
    verdict (its strategy and answer, no accuracy: it trains nothing)."""

    strategy: str
    run_name: str
    run_id: str
    test_accuracy: float | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    verdict: str = ""

    def cells(self, experiment_id: str) -> list[str]:
        link = f"[{self.run_name.replace('|', '/')}](#/experiments/{experiment_id}/runs/{self.run_id})"
        return [
            f"`{self.strategy}`",
            "" if self.test_accuracy is None else f"{self.test_accuracy:.4f}",
            "" if self.trainable_params is None else f"{self.trainable_params:,}",
            "" if self.train_seconds is None else f"{self.train_seconds:.1f}",
            self.verdict,
            link,
        ]


def trained_row(run: Run) -> StrategyRow:
    metrics, tags = run.data.metrics, run.data.tags
    params = metrics.get("model/trainable_params")
    return StrategyRow(
        strategy=tags.get("strategy") or run.data.params.get("finetune.strategy", "?"),
        run_name=run.info.run_name or run.info.run_id,
        run_id=run.info.run_id,
        test_accuracy=metrics["test/accuracy"],
        trainable_params=None if params is None else int(params),
        train_seconds=metrics.get("train/seconds"),
    )


def verdict_row(run: Run) -> StrategyRow:
    tags = run.data.tags
    return StrategyRow(
        strategy=tags.get("verdict.strategy", "?"),
        run_name=run.info.run_name or run.info.run_id,
        run_id=run.info.run_id,
        verdict=", ".join(filter(None, (tags.get("verdict.decision"), tags.get("verdict.certainty")))),
    )


def rows_of(runs: list[Run]) -> list[StrategyRow]:
    """The top-level trainings with a test accuracy, the best first, then the latest verdict. A comparison's runs
    are nested under its parent run and left to reports/compare.md."""
    top = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    trained = [trained_row(run) for run in top if "test/accuracy" in run.data.metrics]
    verdicts = sorted((run for run in top if run.data.tags.get("kind") == "verdict"), key=lambda r: r.info.start_time)
    best = sorted(trained, key=lambda row: -row.test_accuracy)[:SHOWN_TRAININGS]
    return best + [verdict_row(run) for run in verdicts[-1:]]


def markdown(rows: list[StrategyRow], experiment_id: str, data_name: str) -> str:
    header = ["strategy", "test accuracy", "trained parameters", "train seconds", "verdict", "run"]
    lines = [
        f"Strategies tried on `{data_name}`, best test accuracy first; the verdict's answer, asked before "
        "training, last. Rebuilt by each evaluate and verdict.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row.cells(experiment_id)) + " |" for row in rows),
    ]
    return "\n".join(lines)


def describe_experiment(experiment_id: str, data_name: str) -> list[StrategyRow]:
    """Rewrite the experiment's description from its runs; the rows it shows."""
    client = MlflowClient()
    rows = rows_of(client.search_runs([experiment_id], max_results=1000))
    client.set_experiment_tag(experiment_id, NOTE_TAG, markdown(rows, experiment_id, data_name))
    return rows
