"""compare.method: halving: the worse half dropped at each rung, a stop as soon as the paired test decides,
the verdict's order; and the shifted test copy every comparison scores."""

import shutil

import mlflow
import pytest
import torch
import torchvision

from pipeline.choice.compare_report import RANDOM_INIT_PROBE, Budget, CompareReport, Summary
from pipeline.choice.comparison import compare
from pipeline.choice.halving import (
    NOT_WORTH_IT,
    UNDECIDED,
    WORTH_IT,
    paired_test,
    race,
    recommendation,
    rung_budgets,
    seed_from_verdict,
    survivors,
)
from pipeline.choice.verdict_report import VerdictReport
from pipeline.commands.apply import apply_comparison
from pipeline.config import ConfigError, parse_params
from pipeline.data.class_folder import prepare
from pipeline.data.corruptions import CORRUPTIONS, accuracies, shifted_copy
from tests.conftest import ROOT, data_config, default_params, tiny_params, write_class_images


def compare_config(**overrides):
    return parse_params(default_params(**{f"compare.{key}": value for key, value in overrides.items()})).compare


def budget(epochs: int, train_per_class: int | None, seeds: int) -> Budget:
    return Budget(epochs=epochs, train_per_class=train_per_class, seeds=seeds)


def summary(name: str, mean: float, std: float, params: int, seconds: float) -> Summary:
    """A summary whose validation accuracy is its test accuracy."""
    fields = {"runs": 3, "mean": mean, "std": std, "trainable_params": params, "train_seconds": seconds}
    return Summary(strategy=name, val_mean=mean, val_std=std, **fields)


def test_rungs_double_epochs_and_images_up_to_the_compare_budget():
    assert rung_budgets(compare_config()) == [budget(2, 50, 1), budget(4, 100, 3), budget(6, 100, 3)]
    every_image = compare_config(**{"train_per_class": None, "halving.first_epochs": 3, "halving.first_seeds": 2})
    assert rung_budgets(every_image) == [budget(3, 50, 2), budget(6, None, 3)]
    one_rung = compare_config(**{"halving.first_epochs": 6, "halving.first_train_per_class": 100})
    assert rung_budgets(one_rung) == [budget(6, 100, 3)]  # the only rung decides: every seed


def test_the_worse_half_is_dropped_and_ties_go_to_the_earlier_strategy():
    order = ["full", "lp-ft", "norm", "partial", "auto"]
    val = {"norm": 0.90, "partial": 0.85, "auto": 0.80, "full": 0.90, "lp-ft": 0.95}
    assert survivors(val, order) == ["lp-ft", "full", "norm"]  # 3 of 5: the half, rounded up
    assert survivors({"full": 0.9, "lp-ft": 0.8}, order) == ["full"]


def correctness(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_the_paired_test_decides_either_way_and_says_when_it_cannot():
    head = correctness([[1] * 80 + [0] * 20] * 3)  # 3 seeds x 100 images
    far_better = correctness([[1] * 100] * 3)
    decided = paired_test("full", far_better, head, worth_it=1.0, confidence=0.9)
    assert decided.decision == WORTH_IT and decided.gain == pytest.approx(20.0) and decided.low > 1.0
    same = paired_test("full", head, head, worth_it=1.0, confidence=0.9)
    assert same.decision == NOT_WORTH_IT and same.high < 1.0  # identical answers: the gain is 0 for sure
    # one image better, one worse, per seed: a gain of 0 whose spread reaches past 1 point
    noisy = head.clone()
    noisy[:, 0], noisy[:, 99] = False, True
    assert paired_test("full", noisy, head, worth_it=1.0, confidence=0.9).decision == UNDECIDED


def test_a_decided_paired_test_recommends_where_the_seeds_spread_on_test_would_not():
    summaries = {
        "head": summary("head", 0.948, 0.006, 12_810, 3.0),
        "lp-ft": summary("lp-ft", 0.955, 0.006, 3_383_818, 40.0),
    }
    head = correctness([[1] * 90 + [0] * 10] * 3)
    better = correctness([[1] * 100] * 3)
    strategy, lines = recommendation(summaries, paired_test("lp-ft", better, head, worth_it=1.0, confidence=0.9))
    assert strategy == "lp-ft" and lines[0].startswith("**Use `lp-ft`**: it beats the head by more than")
    assert "Test accuracy: 0.955 ± 0.006 against the head's 0.948 ± 0.006." in lines[0]
    strategy, lines = recommendation(summaries, paired_test("lp-ft", head, head, worth_it=1.0, confidence=0.9))
    assert strategy == "head" and "does not beat it by compare.worth_it (1 point) at the full budget" in lines[0]
    noisy = head.clone()
    noisy[:, 0], noisy[:, 99] = False, True
    strategy, lines = recommendation(summaries, paired_test("lp-ft", noisy, head, worth_it=1.0, confidence=0.9))
    assert strategy == "head" and lines[0].endswith("this is the grid's rule, on the seeds' spread.)")  # tied


def verdict_report(strategy: str, confidence: float, source: str = "data/builtin/animal-shape") -> VerdictReport:
    """The committed verdict report with another source, strategy and confidence."""
    committed = VerdictReport.read(ROOT / "reports/verdict/verdict.json")
    decision = {"full": "fine-tune everything", "head": "the head is enough"}[strategy]
    certainty = "sure" if confidence >= 0.9 else "fairly sure"
    verdict = {"decision": decision, "strategy": strategy, "confidence": confidence, "certainty": certainty}
    return committed.model_copy(
        update={
            "setup": committed.setup.model_copy(update={"data_source": source}),
            "verdict": committed.verdict.model_copy(update=verdict),
        }
    )


def test_the_verdict_starts_what_it_rules_out_last_and_drops_it_when_sure():
    strategies = ["head", "norm", "partial", "auto", "full", "lp-ft"]
    source = "data/builtin/animal-shape"
    unsure = seed_from_verdict(strategies, verdict_report("full", 0.7), source, drop_from=0.8)
    assert (unsure.first, unsure.last, unsure.dropped) == (["full", "lp-ft"], ["norm", "partial", "auto"], [])
    assert unsure.order == ["full", "lp-ft", "norm", "partial", "auto"]
    assert unsure.note.endswith("ruled out, started last: norm, partial, auto")
    sure = seed_from_verdict(strategies, verdict_report("full", 0.87), source, drop_from=0.8)
    assert (sure.first, sure.last, sure.dropped) == (["full", "lp-ft"], [], ["norm", "partial", "auto"])
    other_data = seed_from_verdict(strategies, verdict_report("full", 0.99, "data/builtin/digits"), source, 0.8)
    assert other_data.first == ["norm", "partial", "auto", "full", "lp-ft"] and "ignored" in other_data.note
    head_only = seed_from_verdict(["head", "full"], verdict_report("head", 0.99), source, drop_from=0.8)
    # never every strategy: the comparison is there to check the verdict
    assert (head_only.first, head_only.last, head_only.dropped) == (["full"], [], [])


def test_a_race_stops_at_the_first_strategy_that_decides_and_runs_none_behind_it():
    head = correctness([[1] * 80 + [0] * 20] * 3)
    outcomes = {"lp-ft": correctness([[1] * 100] * 3), "full": correctness([[1] * 100] * 3), "norm": head}
    ran = []

    def correct_of(name):
        ran.append(name)
        return outcomes[name]

    budget = compare_config()
    correct, decided = race(["norm", "lp-ft", "full"], correct_of, head, ["full", "lp-ft", "norm"], budget, True)
    assert ran == ["norm", "lp-ft"] and set(correct) == {"norm", "lp-ft"}  # full, behind lp-ft, never trained
    assert (decided.leader, decided.decision) == ("lp-ft", WORTH_IT)
    ran.clear()  # a screening rung runs every strategy, and its test of the leader decides nothing
    correct, decided = race(["norm", "lp-ft", "full"], correct_of, head, ["full", "lp-ft", "norm"], budget, False)
    assert ran == ["norm", "lp-ft", "full"] and decided.leader == "full"  # the tie goes to the verdict's order


def test_the_shifted_copy_is_the_same_for_a_seed_and_differs_from_clean():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first, kinds = shifted_copy(images, seed=3)
    again, kinds_again = shifted_copy(images, seed=3)
    other, other_kinds = shifted_copy(images, seed=4)
    assert torch.equal(first, again) and torch.equal(kinds, kinds_again)
    assert not torch.equal(first, other) or not torch.equal(kinds, other_kinds)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert set(kinds.tolist()) == set(range(len(CORRUPTIONS)))  # 40 images draw every corruption
    for index in range(len(CORRUPTIONS)):  # each corruption changes every image it touches
        chosen = kinds == index
        changed = (first[chosen] != images[chosen]).flatten(1).any(1)
        assert changed.all(), CORRUPTIONS[index]
    scores = accuracies(torch.zeros(40, dtype=torch.int64), torch.zeros(40, dtype=torch.int64), kinds)
    assert scores == {"all": 1.0, **dict.fromkeys(CORRUPTIONS, 1.0)}


@pytest.mark.slow
def test_halving_stops_at_the_first_rung_with_every_seed_once_fine_tuning_clearly_beats_the_head(tmp_path, monkeypatch):
    """Random features (a checkpoint of a random-init network): a head on them is far behind a network that
    trains. The first rung, with one seed, only screens; the second, with both, decides with its first strategy
    and the comparison stops there. The random-init probe runs once, at the deciding rung's budget."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    folder = write_class_images(tmp_path / "images", per_class=12)
    prepare(data_config(folder, val_fraction=0.25, test_fraction=0.25), seed=0, out_dir=tmp_path / "prepared")
    budget = {
        "method": "halving",
        "strategies": ["head", "norm", "full", "lp-ft"],
        "seeds": [0, 1],
        "epochs": 2,
        "head_epochs": 2,
        "image_size": 32,
        "train_per_class": 4,
        "random_init_probe": True,
        "worth_it": 1.0,
        "halving": {
            "first_epochs": 1,
            "first_train_per_class": 2,
            "first_seeds": 1,
            "confidence": 0.9,
            "verdict_drop": 0.8,
        },
    }
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint := tmp_path / "resnet18-random.pt")
    params = tiny_params(**{"model.backbone": "resnet18", "model.weights": str(checkpoint), "compare": budget})
    report = compare(params, tmp_path / "prepared/manifest.csv", tmp_path / "reports", tmp_path / "no-verdict.json")

    halving = report.halving
    screening, deciding = halving.rungs
    assert (screening.seeds, screening.paired_test.seeds) == (1, 1)
    assert len(screening.kept) == 2  # the better half of norm, full and lp-ft
    # a race, screening's leader first: it decides alone, and the other survivor is not run
    first, behind = screening.kept
    assert (deciding.seeds, deciding.strategies, deciding.not_run) == (2, ["head", first], [behind])
    decided = deciding.paired_test
    assert decided.decision == WORTH_IT and decided.low > 1.0 and decided.seeds == 2
    assert halving.stop.startswith("Stopped at rung 1 of 2 (2 epochs): fine-tuning beats the head")
    assert halving.stop.endswith(f"Not run, behind it in the race: `{behind}`.")
    assert report.setup.method == "halving" and report.setup.epochs == 2
    assert set(report.summaries) == {"head", first, RANDOM_INIT_PROBE} and set(report.gain_per_minute) == {first}
    assert [run.seed for run in report.runs if run.strategy == RANDOM_INIT_PROBE] == [0]
    leader = decided.leader
    assert leader == first
    shifted = report.shifted_test.strategies
    assert shifted[leader].by_corruption and set(shifted[leader].by_corruption) <= set(CORRUPTIONS)
    assert shifted[leader].clean == report.summaries[leader].mean

    client = mlflow.MlflowClient(uri)
    parent = report.setup.parent_run_id
    experiment = client.get_run(parent).info.experiment_id
    rungs = {
        run.info.run_name: run for run in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    }
    assert set(rungs) == {"rung 0: 1 epochs, 6 images, 1 seed", "rung 1: 2 epochs, 12 images, 2 seeds"}
    rung_runs = (("rung 0: 1 epochs, 6 images, 1 seed", 4 * 1), ("rung 1: 2 epochs, 12 images, 2 seeds", 2 * 2 + 1))
    for name, runs in rung_runs:
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{rungs[name].info.run_id}'")
        assert len(children) == runs  # every strategy that ran in the rung, once per seed of the rung
    assert rungs["rung 1: 2 epochs, 12 images, 2 seeds"].data.tags["halving.decision"] == WORTH_IT
    # the stopping rung's runs are scored on test and on the shifted copy
    assert all("test/accuracy" in run.data.metrics and "shifted/all" in run.data.metrics for run in children)

    markdown = (tmp_path / "reports/compare.md").read_text()
    assert "## Successive halving" in markdown and "## Out of distribution" in markdown
    probe = report.summaries[RANDOM_INIT_PROBE].mean
    assert f"on random-init features: {probe:.3f} (one seed)." in markdown
    assert f"| `{RANDOM_INIT_PROBE}` | " in markdown and f" | {probe:.3f} (one seed) | 1 | " in markdown
    assert CompareReport.read(tmp_path / "reports/compare.json") == report
    # apply sets what the paired test decided: the leader, which the grid's rule on test need not pick
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert apply_comparison(tmp_path / "reports/compare.json") == report.halving.recommended == leader
    assert report.recommendation[0].startswith(f"**Use `{leader}`**: it beats the head by more than compare.")


def test_verdict_calibration_refuses_a_halving_report(tmp_path, monkeypatch):
    """A halving report's summaries are of the rung it stopped at, not of the budget the rule is fitted for."""
    from pipeline.choice.calibration_cases import CalibrationCase
    from pipeline.choice.case_scores import measured_case

    listed = CalibrationCase(name="halved", family="digits", data="digits")
    monkeypatch.chdir(tmp_path)
    listed.report.parent.mkdir(parents=True)
    shutil.copy(ROOT / "reports/halving/compare.json", listed.report)
    with pytest.raises(ConfigError, match="halved/compare.json is a halving comparison"):
        measured_case(listed, default_params(), tmp_path)
