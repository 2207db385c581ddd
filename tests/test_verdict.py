"""The verdict: its scores (LogME, label issues) on cases with a known answer, its rule, and the stage end to end."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.choice.assessment import assess
from pipeline.choice.compare_report import CompareReport
from pipeline.choice.transferability import class_evidence, logme
from pipeline.choice.verdict_report import VerdictReport, summary_lines
from pipeline.choice.verdict_rule import read_cases
from pipeline.commands.apply import apply_verdict
from pipeline.config import VerdictStrategy, load_params
from pipeline.data.class_folder import prepare
from pipeline.data.manifest import read_manifest
from pipeline.finetune.strategies import STRATEGIES
from tests.conftest import ROOT, data_config, stage_env, stage_project, tiny_params, with_strategy, write_class_images

CALIBRATION = ROOT / "reports/verdict/calibration.jsonl"
LABEL_CHECK = ROOT / "reports/verdict/label_check.jsonl"


def dense_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) / n straight from the definition, without the SVD."""
    n, d = features.shape
    precision = alpha * np.eye(d) + beta * features.T @ features
    mean = beta * np.linalg.solve(precision, features.T @ target)
    residual = np.sum((features @ mean - target) ** 2)
    log_det = np.linalg.slogdet(precision)[1]
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * mean @ mean
        - log_det / 2
    )
    return evidence / n


def svd_evidence(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    left, singular, _ = np.linalg.svd(features, full_matrices=False)
    projected = left.T @ target
    return class_evidence(singular**2, projected, target @ target - projected @ projected, *features.shape)


@pytest.mark.parametrize(("n", "d"), [(40, 5), (8, 12)])  # more images than features, and fewer (rank < d)
def test_logme_is_the_evidence_of_the_definition_at_its_maximum(n, d):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, d))
    target = features @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    per_image, alpha, beta = svd_evidence(features, target)
    assert per_image == pytest.approx(dense_evidence(features, target, alpha, beta), rel=1e-9)
    # the fixed point maximises the evidence: any other alpha or beta explains the labels worse
    for other_alpha, other_beta in ((alpha * 1.3, beta), (alpha / 1.3, beta), (alpha, beta * 1.3), (alpha, beta / 1.3)):
        assert dense_evidence(features, target, other_alpha, other_beta) < per_image


def test_logme_stays_finite_when_the_labels_lie_in_the_features_span():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(8, 12))
    labels = np.array([0, 1] * 4)
    assert np.isfinite(logme(features, labels))


def test_logme_is_higher_for_separable_features_than_for_shuffled_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    features = rng.normal(size=(200, 16)) + 3 * np.eye(16)[labels]  # each class lifts its own feature
    shuffled = rng.permutation(labels)
    separable, scrambled = logme(features, labels), logme(features, shuffled)
    print(f"LogME: separable {separable:.3f}, shuffled labels {scrambled:.3f}")
    assert separable > scrambled + 0.1


def test_the_label_noise_step_finds_planted_label_errors(tmp_path, monkeypatch):
    """5% of a training split's labels flipped in the manifest; the verdict's scoring path (real images, the
    pretrained backbone, the cross-validated probe, cleanlab) must name most of them and little else."""
    monkeypatch.chdir(tmp_path)
    write_class_images(tmp_path / "images", per_class=100, size=24)
    prepare(data_config(tmp_path / "images"), seed=0, out_dir=tmp_path / "prepared")
    manifest = tmp_path / "prepared/manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [row for row in rows if row["split"] == "train"]
    rng = np.random.default_rng(0)
    flipped = set()
    classes = sorted({row["label"] for row in rows})
    for index in rng.choice(len(train), size=round(0.05 * len(train)), replace=False):
        row = train[index]
        row["label"] = rng.choice([name for name in classes if name != row["label"]])
        flipped.add(row["path"])
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)

    assessment = assess(tiny_params(), manifest, image_size=32)
    found = {assessment.split.paths[index] for index in assessment.issues}
    precision = len(found & flipped) / max(len(found), 1)
    recall = len(found & flipped) / len(flipped)
    print(f"planted {len(flipped)} wrong labels; flagged {len(found)}: precision {precision:.2f}, recall {recall:.2f}")
    assert recall >= 0.6 and precision >= 0.8  # measured: 7 of 10 found, none wrongly


def test_the_committed_calibration_reads_and_every_case_names_its_comparison():
    cases = read_cases(CALIBRATION)
    assert len(cases) >= 4
    for case in cases:
        report = CompareReport.read(ROOT / case.report)
        assert (report.setup.epochs, report.setup.image_size) == (case.epochs, case.image_size)
        assert case.measured_best in case.measured_within_spread and "head" in case.measured


@pytest.mark.slow
def test_the_verdict_stage_writes_its_report_and_logs_an_mlflow_run(tmp_path):
    project = stage_project(tmp_path, **{"model.backbone": "efficientnet_lite0", "model.weights": "DEFAULT"})
    (project / "reports/verdict").mkdir(parents=True)
    for name in (CALIBRATION, LABEL_CHECK):
        shutil.copy(name, project / "reports/verdict" / name.name)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.verdict"],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    report = VerdictReport.read(project / "reports/verdict/verdict.json")
    assert result.stdout.startswith("\n".join(summary_lines(report)))
    assert report.verdict.strategy in STRATEGIES
    assert 0 <= report.scores.probe_accuracy <= 1 and report.setup.images == 24  # train + val, not test
    # what finetune.strategy: verdict trains, and what its test split is worth (a few images: nearly nothing)
    chosen = VerdictStrategy.model_validate_json((project / "reports/verdict/strategy.json").read_text())
    assert (chosen.strategy, chosen.decision) == (report.verdict.strategy, report.verdict.decision)
    test_images = sum(row["split"] == "test" for row in read_manifest(project / "data/prepared/manifest.csv"))
    assert report.setup.test_images == test_images
    assert f"Warning: the test split's {test_images} images tell two strategies apart only when" in result.stdout
    assert (project / "reports/verdict/label_issues.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "## The rule, and how it fares on families it was not fitted on"
        in (project / "reports/verdict/verdict.md").read_text()
    )

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(report.setup.run_id)
    assert run.data.tags["kind"] == "verdict" and run.data.tags["verdict.decision"] == report.verdict.decision
    assert run.data.metrics["verdict/probe_accuracy"] == pytest.approx(report.scores.probe_accuracy, abs=1e-4)
    assert run.data.tags["mlflow.note.content"].startswith("Verdict: ")
    experiment = client.get_experiment(run.info.experiment_id)  # the data's, its description the answer
    answer = f"| `{report.verdict.strategy}` |  |  |  | {report.verdict.decision}, {report.verdict.certainty} |"
    assert experiment.name == "images" and answer in experiment.tags["mlflow.note.content"]
    # named after the data it judged, and timed over the whole verdict, the backbone's pass included
    assert run.info.run_name == "verdict · images · efficientnet_lite0"
    assert (run.info.end_time - run.info.start_time) / 1000 >= 0.9 * report.setup.seconds
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "verdict")}
    assert logged == {
        f"verdict/{name}"
        for name in ("verdict.json", "verdict.md", "label_issues.png", "calibration.jsonl", "strategy.json")
    }


def test_apply_sets_the_verdicts_strategy_in_params_yaml_keeping_its_comments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    committed = VerdictReport.read(ROOT / "reports/verdict/verdict.json")

    def with_verdict(**verdict) -> Path:
        committed.model_copy(update={"verdict": committed.verdict.model_copy(update=verdict)}).write(report)
        return report

    report = tmp_path / "verdict.json"
    partial = {"decision": "fine-tune the last 3 blocks", "strategy": "partial", "unfreeze_blocks": 3}
    assert apply_verdict(with_verdict(**partial)) == "partial (fine-tune the last 3 blocks)"
    params = load_params(tmp_path / "params.yaml")
    assert (params.finetune.strategy, params.finetune.unfreeze_blocks) == ("partial", 3)
    expected = with_strategy(original, "partial").replace("unfreeze_blocks: 2 ", "unfreeze_blocks: 3 ")
    assert (tmp_path / "params.yaml").read_text() == expected
    apply_verdict(with_verdict(strategy="head", unfreeze_blocks=None))
    assert "  strategy: head       " in (tmp_path / "params.yaml").read_text()


def test_readme_shows_the_committed_verdict():
    """The README's example output is what the committed report prints, not hand-copied figures."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Is the head enough? Ask first", 1)[1]
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1).strip().splitlines()
    report = VerdictReport.read(ROOT / "reports/verdict/verdict.json")
    assert shown == summary_lines(report)
