"""The report of a strategy comparison (`python -m pipeline.commands.compare`), as one typed object: what the
comparison wrote to reports/compare.json, what its Markdown page, calibration and the docs read back.

Reports written by earlier versions lack the fields added since (the shifted test copy, the gain per
minute, the machine's load); they load with those left out, and are written back as they were.
"""

import json
import statistics
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipeline.atomic import write_json

RANDOM_INIT_PROBE = "head (random init)"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(Record):
    """One run of the comparison, scored on the test split."""

    strategy: str
    seed: int
    test_accuracy: float
    best_val_accuracy: float
    train_seconds: float
    trainable_params: int  # of this run: `auto` chooses its blocks per seed
    run_id: str
    # on the shifted test copy: `all`, and per corruption (pipeline.data.corruptions)
    shifted_accuracy: dict[str, float] | None = None


class Summary(Record):
    """A strategy's runs over the seeds."""

    strategy: str
    runs: int
    mean: float  # test accuracy over the seeds
    std: float
    trainable_params: int  # mean over the seeds
    train_seconds: float
    val_mean: float  # the best epoch's validation accuracy over the seeds: what the recommendation is chosen on
    val_std: float

    def over_seeds(self, validation: bool = False) -> str:
        """Test (or validation) accuracy, mean ± std over the seeds; a single run has no spread to show."""
        mean, std = (self.val_mean, self.val_std) if validation else (self.mean, self.std)
        return f"{mean:.3f} ± {std:.3f}" if self.runs > 1 else f"{mean:.3f} (one seed)"


class LoadAverage(Record):
    cores: int
    before: list[float]  # over 1 / 5 / 15 minutes
    after: list[float]

    def text(self) -> str:
        before, after = (" / ".join(f"{value:.1f}" for value in load) for load in (self.before, self.after))
        return f"on {self.cores} cores whose load average was {before} at the start and {after} at the end"


class Setup(Record):
    date: str
    git_commit: str
    parent_run_id: str
    method: str | None = None  # grid or halving
    data_source: str
    train_images: int
    train_per_class: int | None
    val_images: int
    test_images: int
    classes: int
    image_size: int
    backbone: str
    weights: str
    epochs: int
    head_epochs: int
    seeds: list[int]
    worth_it: float | None = None
    seconds: float | None = None  # the whole comparison, decoding and scoring included
    train_seconds: float | None = None  # training of every run it made (every rung's under halving)
    # other work on the machine slows every run: the times are only comparable at a similar load
    load_average: LoadAverage | None = None


class ShiftRow(Record):
    clean: float
    shifted: float
    drop: float
    by_corruption: dict[str, float]


class ShiftedTest(Record):
    seed: int
    strategies: dict[str, ShiftRow]


class PairedTest(Record):
    """The leader's accuracy gain over the head on the same images, in points, and what it decides."""

    leader: str
    gain: float  # mean over images of (leader correct - head correct), averaged over the seeds
    low: float  # the interval at `confidence`
    high: float
    confidence: float
    images: int
    seeds: int
    worth_it: float
    decision: str  # pipeline.choice.halving's WORTH_IT, NOT_WORTH_IT or UNDECIDED


class Seeding(Record):
    """The strategies halving starts with, in the verdict's order, and why."""

    first: list[str]  # fine-tuning strategies rung 0 screens, the verdict's favourite first
    last: list[str]  # ruled out by the verdict: run only where those before them have not decided
    dropped: list[str]  # ruled out by a verdict sure enough not to run them
    note: str

    @property
    def order(self) -> list[str]:
        """Every strategy that may run, in the verdict's order: the tie-break of a ranking."""
        return self.first + self.last


class Budget(Record):
    epochs: int
    train_per_class: int | None  # None: every training image
    seeds: int  # the first this many of compare.seeds


class FullBudget(Record):
    epochs: int
    train_per_class: int | None


class Rung(Record):
    rung: int
    epochs: int
    train_per_class: int | None
    train_images: int
    seeds: int
    strategies: list[str]  # that trained at this rung, the head first
    not_run: list[str]  # behind the one that decided, in the race
    val_accuracy: dict[str, float]  # mean over the seeds
    train_seconds: dict[str, float]
    paired_test: PairedTest
    kept: list[str]
    run_id: str


class Halving(Record):
    recommended: str
    seeding: Seeding
    budget: FullBudget
    rungs: list[Rung]
    stop: str  # why it stopped, in a sentence
    final: Budget  # the stopping rung's


class CompareReport(Record):
    setup: Setup
    recommendation: list[str]  # plain-language lines, the strategy to use first
    summaries: dict[str, Summary]
    gain_per_minute: dict[str, float] | None = None
    shifted_test: ShiftedTest | None = None
    halving: Halving | None = None
    batchnorm_shift: dict[str, float]
    runs: list[Result]

    @classmethod
    def read(cls, path: Path) -> "CompareReport":
        return cls.model_validate(json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json", exclude_unset=True))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[Result]) -> dict[str, Summary]:
    summaries = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        mean, std = mean_std([r.test_accuracy for r in runs])
        val_mean, val_std = mean_std([r.best_val_accuracy for r in runs])
        summaries[strategy] = Summary(
            strategy=strategy,
            runs=len(runs),
            mean=mean,
            std=std,
            trainable_params=round(statistics.fmean(r.trainable_params for r in runs)),
            train_seconds=statistics.fmean(r.train_seconds for r in runs),
            val_mean=val_mean,
            val_std=val_std,
        )
    return summaries


def gain_per_minute(summaries: dict[str, Summary]) -> dict[str, float]:
    """Each fine-tuning strategy's test accuracy over the head's, in points per minute of its training."""
    head = summaries.get("head")
    if head is None:
        return {}
    return {
        name: 100 * (s.mean - head.mean) / (s.train_seconds / 60)
        for name, s in summaries.items()
        if name not in ("head", RANDOM_INIT_PROBE)
    }


def shift_summary(results: list[Result], seed: int) -> ShiftedTest:
    """Per strategy, mean over seeds of the clean and the shifted test accuracy, and per corruption."""
    strategies = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        shifted = {key: statistics.fmean(r.shifted_accuracy[key] for r in runs) for key in runs[0].shifted_accuracy}
        clean = statistics.fmean(r.test_accuracy for r in runs)
        strategies[strategy] = ShiftRow(
            clean=clean,
            shifted=shifted["all"],
            drop=clean - shifted["all"],
            by_corruption={key: value for key, value in shifted.items() if key != "all"},
        )
    return ShiftedTest(seed=seed, strategies=strategies)
