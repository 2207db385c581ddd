"""The verdict's rule on synthetic calibration cases with a known answer: fitting recovers a planted relation,
no family is in its own fit, twins are refused, the simplest rule within one standard error is kept, where to
tune follows the BatchNorm shift or the per-block probes, and data outside the calibration gets "unsure" and the
advice to measure with halving."""

import numpy as np
import pytest

from pipeline.choice.coverage import Coverage
from pipeline.choice.decision import HALVING_ADVICE, HEAD_IS_ENOUGH, decide
from pipeline.choice.label_check import check_row, precision_at
from pipeline.choice.rule_validation import CONSTANT, family_folds, held_out_gains, validate
from pipeline.choice.verdict_rule import FEATURES, Case, Scores, fit
from pipeline.choice.where_to_tune import where_to_tune
from pipeline.config import ConfigError

BLOCKS = ["stem", "mid", "late", "top"]
SETTINGS = (1.0, 0.2, 2)  # worth_it, shift_threshold, unfreeze_blocks


def scores(probe: float, knn: float | None = None, shifts: dict | None = None, **fields) -> Scores:
    values = {
        "images": 1000,
        "images_per_class": 50.0,
        "probe_accuracy": probe,
        "knn_accuracy": probe - 0.02 if knn is None else knn,
        "logme": 0.3,
        "multi_depth_accuracy": probe + 0.01,
        "label_issue_rate": 0.0,
        "batchnorm_shift": {"stem": 0.3, "mid": 0.3, "late": 0.3, "top": 0.3} if shifts is None else shifts,
    }
    return Scores(**values | fields)


def case(name: str, family: str, probe: float, gain: float, **fields) -> Case:
    head = probe
    return Case(
        name=name,
        family=family,
        data=f"{family}/{name}",
        report=f"reports/calibration/{name}/compare.json",
        backbone="efficientnet_lite0",
        weights="DEFAULT",
        image_size=64,
        epochs=4,
        train_per_class=50,
        scores=scores(probe, **fields),
        measured={"head": head, "full": head + gain / 100, "partial": head + gain / 100 - 0.01},
        measured_best="full",
        measured_within_spread=["full"] if gain >= 1 else ["head", "partial", "full"],
    )


def planted(noise: float = 0.3, seed: int = 0) -> list[Case]:
    """Six families of five cases whose gain is -3 + 0.5 x the probe's error in points, plus noise: the head is
    enough from a probe accuracy of 0.92."""
    rng = np.random.default_rng(seed)
    cases = []
    for family in ("a", "b", "c", "d", "e", "f"):
        for i, probe in enumerate(rng.uniform(0.80, 0.995, 5)):
            gain = -3 + 0.5 * 100 * (1 - probe) + rng.normal(0, noise)
            cases.append(case(f"{family}{i}", family, float(probe), float(gain)))
    return cases


def test_a_fitted_rule_recovers_the_planted_relation():
    rule = fit("probe error + intercept", planted(noise=0.05))
    assert rule.weights == pytest.approx((-3.0, 0.5), abs=0.05)
    assert rule.gain(scores(0.9), epochs=4) == pytest.approx(-3 + 5, abs=0.1)


def test_no_family_is_in_its_own_fit_and_every_case_is_predicted_once():
    cases = planted()
    folds = list(family_folds(cases))
    assert [family for family, _, _ in folds] == ["a", "b", "c", "d", "e", "f"]
    for family, train, test in folds:
        assert {c.family for c in train}.isdisjoint({family}) and {c.family for c in test} == {family}
    assert set(held_out_gains("probe error + intercept", cases)) == {c.name for c in cases}
    # a constant rule predicts each family by the other families' mean gain, never its own
    other_mean = np.mean([c.gain for c in cases if c.family != "a"])
    assert held_out_gains(CONSTANT, cases)["a0"] == pytest.approx(other_mean)


def test_twins_are_refused_naming_them():
    cases = planted()
    twin = cases[0].model_copy(update={"name": "again"})
    with pytest.raises(ConfigError, match="twin cases .*: a0, again"):
        validate([*cases, twin], SETTINGS)


def test_validation_keeps_the_simplest_rule_within_one_standard_error_and_shows_the_constant():
    validation = validate(planted(), SETTINGS)
    scores_by_rule = {rule.name: rule for rule in validation.rules}
    best = min(validation.rules, key=lambda rule: rule.rmse)
    chosen = scores_by_rule[validation.chosen]
    assert chosen.rmse**2 <= best.rmse**2 + best.mse_se
    earlier = list(scores_by_rule)[: list(scores_by_rule).index(validation.chosen)]
    assert all(scores_by_rule[name].rmse ** 2 > best.rmse**2 + best.mse_se for name in earlier)
    # the planted relation beats a constant on both questions, and says so
    assert chosen.rmse < validation.constant.rmse and chosen.balanced_accuracy > validation.constant.balanced_accuracy
    assert validation.constant.balanced_accuracy == pytest.approx(0.5)
    assert 0 < validation.head_enough_share < 1 and validation.cases == 30 and len(validation.families) == 6
    assert sum(b.cases for b in validation.reliability) == 30


def test_where_follows_the_batchnorm_shift_or_the_block_probes():
    shifted_top = scores(0.9, shifts={"stem": 0.05, "mid": 0.1, "late": 0.3, "top": 0.6})
    assert where_to_tune(shifted_top, BLOCKS, 2, 0.2, 1.0).strategy == "partial"
    shifted_stem = scores(0.9, shifts={"stem": 0.5, "mid": 0.1, "late": 0.1, "top": 0.1})
    assert where_to_tune(shifted_stem, BLOCKS, 2, 0.2, 1.0).blocks == BLOCKS
    # no BatchNorm: the features below the top blocks already classify as well as the last layer's
    no_batchnorm = {"batchnorm_shift": {}, "block_probe_accuracy": {"stem": 0.5, "mid": 0.895, "late": 0.9, "top": 0.9}}
    assert where_to_tune(scores(0.9, **no_batchnorm), BLOCKS, 2, 0.2, 1.0).strategy == "partial"
    growing = no_batchnorm | {"block_probe_accuracy": {"stem": 0.3, "mid": 0.5, "late": 0.7, "top": 0.9}}
    assert where_to_tune(scores(0.9, **growing), BLOCKS, 2, 0.2, 1.0).strategy == "full"


def test_data_outside_the_calibration_is_unsure_and_told_to_measure():
    cases = planted()
    validation = validate(cases, SETTINGS)
    rule = fit(validation.chosen, cases, gain_sd=1.0)
    coverage = Coverage.of(cases)
    inside = cases[3].scores
    assert coverage.outside(inside, 64, "efficientnet_lite0") == []
    far = scores(0.30, knn=0.10, shifts={"stem": 3.0, "mid": 3.0, "late": 3.0, "top": 3.0}, images_per_class=2000.0)
    notes = coverage.outside(far, 224, "vit_tiny_patch16_224")
    assert len(notes) == 5 and "unlike any calibration family" in notes[-1]
    trusted = decide(rule, inside, 4, BLOCKS, SETTINGS, [])
    doubted = decide(rule, far, 4, BLOCKS, SETTINGS, notes)
    assert trusted.advice is None and trusted.gain_sd == 1.0
    assert (doubted.certainty, doubted.advice, doubted.gain_sd) == ("unsure", HALVING_ADVICE, 2.0)


def test_the_head_is_enough_when_the_expected_gain_is_below_worth_it():
    cases = planted()
    rule = fit("probe error + intercept", cases, gain_sd=1.0)
    easy = decide(rule, scores(0.999), 4, BLOCKS, SETTINGS, [])
    assert (easy.decision, easy.strategy, easy.blocks) == (HEAD_IS_ENOUGH, "head", [])
    hard = decide(rule, scores(0.8), 4, BLOCKS, SETTINGS, [])
    assert hard.strategy in ("partial", "full") and hard.expected_gain > 5 and hard.certainty == "sure"
    assert (hard.decision, hard.blocks) == ("fine-tune everything", BLOCKS)  # every block's inputs shifted


def test_flagged_labels_count_as_wrong_only_as_far_as_the_label_check_found_them():
    rows = [
        check_row("confusable", 0.7, flagged={f"x{i}" for i in range(20)}, planted={"x0", "x1", "x2", "x3", "x4"}),
        check_row("clean", 0.99, flagged={"y0", "y1", "y2", "y3"}, planted={"y0", "y1", "y2", "y3", "y9"}),
    ]
    assert [(r.precision, r.recall) for r in rows] == [(0.25, 1.0), (1.0, 0.8)]
    assert precision_at(rows, 0.7) == 0.25 and precision_at(rows, 0.99) == 1.0
    assert precision_at(rows, 0.845) == pytest.approx(0.625)  # between the two checks, interpolated
    assert precision_at([], 0.9) == 0.0  # no check: no flagged image is taken for a wrong label
    flagged = scores(0.7, label_issue_rate=0.2).with_wrong_labels(precision_at(rows, 0.7))
    assert flagged.wrong_label_rate == pytest.approx(0.05)  # a quarter of the 20% flagged
    assert FEATURES["probe error"](flagged, 4) == pytest.approx(100 * (1 - 0.7 - 0.05))  # not counted as error
