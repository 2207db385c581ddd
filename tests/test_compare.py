"""make compare: every strategy and seed at one budget, a report whose numbers are its MLflow runs'."""

import statistics
import subprocess
import sys

import mlflow
import pytest

from pipeline.choice.compare_report import RANDOM_INIT_PROBE, CompareReport, Summary
from pipeline.choice.comparison import compare
from pipeline.choice.comparison_rule import choose_strategy, findings
from pipeline.config import load_params
from pipeline.data.class_folder import prepare
from tests.conftest import ROOT, data_config, stage_env, tiny_params, with_strategy

pytestmark = pytest.mark.slow


def test_the_report_holds_the_numbers_of_its_mlflow_runs(image_folder, in_tmp_project, monkeypatch):
    uri = f"sqlite:///{in_tmp_project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prepare(
        data_config(image_folder, val_fraction=0.25, test_fraction=0.25),
        seed=0,
        out_dir=in_tmp_project / "prepared",
    )
    budget = {
        "strategies": ["head", "norm", "auto", "full"],
        "seeds": [0, 1],
        "epochs": 1,
        "head_epochs": 2,
        "image_size": 32,
        "train_per_class": 2,
        "random_init_probe": True,
    }
    params = tiny_params(
        **{
            "model.backbone": "efficientnet_lite0",
            "model.weights": "DEFAULT",
            "finetune.unfreeze_blocks": 1,
            **{f"compare.{key}": value for key, value in budget.items()},  # the other compare keys from params.yaml
        }
    )
    report = compare(params, in_tmp_project / "prepared" / "manifest.csv", in_tmp_project / "reports")

    client = mlflow.MlflowClient(uri)
    parent = report.setup.parent_run_id
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == len(report.runs) == 2 * 5  # 4 strategies + the random-init probe, 2 seeds
    by_id = {run.info.run_id: run for run in children}
    for row in report.runs:
        run = by_id[row.run_id]
        assert run.data.metrics["test/accuracy"] == pytest.approx(row.test_accuracy, abs=1e-4)  # 4 digits
        assert run.data.metrics["model/trainable_params"] == row.trainable_params
        assert (run.data.tags["strategy"], run.data.tags["seed"]) == (row.strategy, str(row.seed))
    for name in ("head", "norm", "auto", "full", RANDOM_INIT_PROBE):
        runs = [r.data.metrics for r in children if r.data.tags["strategy"] == name]
        summary = report.summaries[name]
        assert summary.mean == pytest.approx(statistics.fmean(m["test/accuracy"] for m in runs), abs=1e-4)
        assert summary.std == pytest.approx(statistics.stdev(m["test/accuracy"] for m in runs), abs=1e-4)
        assert summary.trainable_params == round(statistics.fmean(m["model/trainable_params"] for m in runs))
        assert summary.val_mean == pytest.approx(statistics.fmean(m["val/best_accuracy"] for m in runs), abs=1e-4)
        assert (
            f"| `{name}` | {summary.val_mean:.3f} ± {summary.val_std:.3f} | "
            f"{summary.mean:.3f} ± {summary.std:.3f} | 2 |" in (in_tmp_project / "reports/compare.md").read_text()
        )
    assert report.setup.train_images == 3 * 2
    params_of = {r.data.tags["strategy"]: r.data.params for r in children}
    assert params_of[RANDOM_INIT_PROBE]["model.weights"] == "none" and params_of["full"]["model.weights"] == "DEFAULT"
    assert params_of["full"]["train.epochs"] == "1" and params_of["full"]["train.image_size"] == "32"

    assert CompareReport.read(in_tmp_project / "reports/compare.json") == report
    # the grid also scores every run on the shifted test copy, and gives the gain over the head per minute
    assert report.setup.method == "grid" and report.halving is None
    assert set(report.shifted_test.strategies) == set(report.summaries)
    assert all("shifted/all" in run.data.metrics for run in children)
    assert set(report.gain_per_minute) == {"norm", "auto", "full"}
    assert (in_tmp_project / "reports/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {"report/compare.md", "report/compare.json", "report/compare.png"}
    for run in (
        r for r in children if r.data.tags["strategy"] == "auto"
    ):  # its choice, logged by the train stage's callback
        assert "auto.blocks" in run.data.tags and "auto/probe_accuracy" in run.data.metrics
    assert set(report.batchnorm_shift) == {"conv_stem", *(f"blocks.{i}" for i in range(7)), "conv_head"}
    # saturated single-colour noise is far from ImageNet photos: the stem's inputs are shifted
    assert report.batchnorm_shift["conv_stem"] > 0.1


def summary(name, mean, std, params, seconds, val_mean=None, val_std=None):
    """A summary whose validation accuracy is its test accuracy unless told."""
    return Summary(
        strategy=name,
        runs=3,
        mean=mean,
        std=std,
        trainable_params=params,
        train_seconds=seconds,
        val_mean=mean if val_mean is None else val_mean,
        val_std=val_std or std,
    )


def test_recommendation_prefers_the_cheapest_strategy_within_the_spread_of_the_best():
    lines = findings(
        {
            "head": summary("head", 0.94, 0.01, 10_000, 10.0),
            "partial": summary("partial", 0.95, 0.01, 1_000_000, 60.0),
            "full": summary("full", 0.951, 0.005, 3_000_000, 120.0),
            RANDOM_INIT_PROBE: summary(RANDOM_INIT_PROBE, 0.60, 0.02, 10_000, 10.0),
        }
    )
    assert lines[0].startswith("**Use `head`**") and "`full` (0.951 ± 0.005)" in lines[0] and "12.0× less" in lines[0]
    assert "Training the head is enough here: it reaches 98.8% of full" in lines[1]
    assert "Pretraining helps on this data" in lines[2]


def test_recommendation_does_not_claim_a_saving_it_did_not_measure():
    # all tied; `partial` is the fastest, `norm` the most accurate in about its time, `full` the best but slower
    lines = findings(
        {
            "partial": summary("partial", 0.950, 0.01, 1_000_000, 100.0),
            "norm": summary("norm", 0.951, 0.01, 50_000, 115.0),
            "full": summary("full", 0.953, 0.01, 3_000_000, 125.0),
        }
    )
    assert lines[0].startswith("**Use `norm`**")
    assert "`full` (0.953 ± 0.010), in about the same training time;" in lines[0]


def test_recommendation_is_chosen_on_validation_and_ties_in_time_go_to_the_more_accurate():
    summaries = {
        "head": summary("head", 0.90, 0.01, 12_810, 3.0),
        # the best on test, not on validation: the test split must not pick the recommendation
        "full": summary("full", 0.960, 0.003, 3_383_818, 60.0, val_mean=0.955, val_std=0.010),
        # tied with full on validation, 4% slower: about the same time, so the more accurate on validation wins
        "lp-ft": summary("lp-ft", 0.949, 0.004, 3_383_818, 62.5, val_mean=0.965, val_std=0.006),
    }
    choice = choose_strategy(summaries)
    assert choice.chosen.strategy == choice.best.strategy == "lp-ft"
    lines = findings(summaries)
    assert lines[0] == (
        "**Use `lp-ft`**: 0.965 ± 0.006 validation accuracy, the best of all; 0.949 ± 0.004 on the test split."
    )
    summaries["lp-ft"].train_seconds = 75.0  # now 25% slower than full, which is tied: full, for the time
    choice = choose_strategy(summaries)
    assert (choice.chosen.strategy, choice.best.strategy) == ("full", "lp-ft")


def test_recommendation_says_when_pretrained_features_are_no_better_than_random():
    lines = findings(
        {
            "head": summary("head", 0.70, 0.03, 10_000, 10.0),
            "full": summary("full", 0.95, 0.01, 3_000_000, 120.0),
            RANDOM_INIT_PROBE: summary(RANDOM_INIT_PROBE, 0.69, 0.03, 10_000, 10.0),
        }
    )
    assert lines[0].startswith("**Use `full`**") and lines[0].endswith(
        "the best of all; 0.950 ± 0.010 on the test split."
    )
    assert "Training the head is not enough here" in lines[1]
    assert "no better than random ones on this data (linear probe 0.700 vs 0.690)" in lines[2]


def apply(kind: str, report, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.commands.apply", kind, str(report)]
    return subprocess.run(command, cwd=cwd, env=stage_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True)


def test_apply_sets_the_recommended_strategy_in_params_yaml_keeping_its_comments(tmp_path):
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    summaries = {  # lp-ft ties with full and is the better on validation (full on test): it is recommended
        "head": summary("head", 0.80, 0.01, 12_810, 5.0),
        "full": summary("full", 0.956, 0.002, 3_383_818, 100.0, val_mean=0.950),
        "lp-ft": summary("lp-ft", 0.955, 0.001, 3_383_818, 90.0, val_mean=0.952),
    }
    report = CompareReport.read(ROOT / "reports/grid/compare.json").model_copy(update={"summaries": summaries})
    report.write(tmp_path / "compare.json")
    applied = apply("compare", tmp_path / "compare.json", tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "params.yaml: finetune.strategy: lp-ft (recommended by" in applied.stdout
    changed = (tmp_path / "params.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").finetune.strategy == "lp-ft"
    assert changed == with_strategy(original, "lp-ft")  # comment in place
    assert not list(tmp_path.glob(".*.partial"))
    missing = apply("compare", tmp_path / "nowhere.json", tmp_path)
    assert missing.returncode == 1 and "nowhere.json not found: run `make compare` first" in missing.stderr
