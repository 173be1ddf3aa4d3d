"""Calibration, temperature scaling and the review threshold (exports.calibration, bench.release.calibrate)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.release.calibrate import calibrate_logits, operating_point, torch_figures
from exports import calibration as C


def _logits_with_confidence(conf: np.ndarray, k: int = 6) -> np.ndarray:
    """Logits whose softmax puts `conf` on class 0 and the rest evenly on the others."""
    p = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    p[:, 0] = conf
    return np.log(p)


def _perfectly_calibrated(m: int = 200):
    """In every bin the share of correct images equals the confidence, exactly."""
    confs, labels = [], []
    for c in (0.3, 0.45, 0.6, 0.75, 0.9, 0.95):
        right = round(c * m)
        confs += [c] * m
        labels += [0] * right + [1] * (m - right)  # class 0 is the prediction
    return _logits_with_confidence(np.array(confs)), np.array(labels)


def test_perfectly_calibrated_case_has_ece_zero_in_numpy_and_torchmetrics():
    logits, labels = _perfectly_calibrated()
    np_fig, tm_fig = C.figures(logits, labels), torch_figures(logits, labels)
    assert np_fig["ece"] < 1e-9 and np_fig["mce"] < 1e-9
    assert tm_fig["ece"] < 1e-5 and tm_fig["mce"] < 1e-5  # torchmetrics bins in float32


def test_overconfident_case_has_the_expected_ece():
    """Every image at confidence 0.9, half of them right: ECE = MCE = 0.4."""
    logits = _logits_with_confidence(np.full(100, 0.9))
    labels = np.array([0] * 50 + [1] * 50)
    for fig in (C.figures(logits, labels), torch_figures(logits, labels)):
        assert fig["ece"] == pytest.approx(0.4, abs=1e-6)
        assert fig["mce"] == pytest.approx(0.4, abs=1e-6)


def test_numpy_metrics_equal_torchmetrics_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (500, 6))
    labels = rng.integers(0, 6, 500)
    a, b = C.figures(logits, labels, 1.7), torch_figures(logits, labels, 1.7)
    for k in ("ece", "mce", "nll", "brier", "accuracy"):
        assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_fit_temperature_recovers_a_known_temperature():
    """Labels drawn from softmax(z); the network reports 3 z: the fitted T is ~3."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (20000, 6))
    p = C.softmax_t(z)
    labels = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    t = C.fit_temperature(3 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert C.nll(3 * z, labels, t) < C.nll(3 * z, labels)


def test_temperature_is_fitted_on_validation_only():
    """Swapping (permuting) the test labels changes the test figures, never the temperature."""
    rng = np.random.default_rng(2)
    val, test = rng.normal(0, 4, (120, 6)), rng.normal(0, 4, (300, 6))
    val_y, test_y = val.argmax(1), test.argmax(1)
    val_y[:30] = (val_y[:30] + 1) % 6  # overconfident: some confident answers are wrong
    a = calibrate_logits(val, val_y, test, test_y, target=0.99)
    b = calibrate_logits(val, val_y, test, rng.permutation(test_y), target=0.99)
    assert a["temperature"] == b["temperature"] == C.fit_temperature(val, val_y)
    assert a["review"]["threshold"] == b["review"]["threshold"]
    assert a["after"]["nll"] != b["after"]["nll"]  # the test labels were really different
    assert a["fitted_on"] == "validation" and a["fit_images"] == 120


def test_worse_test_nll_after_temperature_is_flagged():
    """Validation says 'sharpen' (all right), test is mostly wrong: test NLL gets worse."""
    rng = np.random.default_rng(3)
    val = rng.normal(0, 1, (100, 6))
    test = rng.normal(0, 1, (100, 6))
    rec = calibrate_logits(val, val.argmax(1), test, (test.argmax(1) + 1) % 6, target=0.9)
    assert rec["temperature"] < 1
    assert rec["nll_worse_after"] is True
    assert rec["after"]["nll"] > rec["before"]["nll"]


def test_select_threshold_on_a_constructed_case():
    conf = np.array([0.99, 0.98, 0.97, 0.9, 0.8, 0.6])
    ok = np.array([1, 1, 1, 0, 1, 0], bool)
    assert C.select_threshold(conf, ok, 1.0) == 0.97  # the first three only
    assert C.select_threshold(conf, ok, 0.75) == 0.8  # 4 of 5; 0.6 would give 4 of 6
    assert C.select_threshold(conf, ok, 0.6) == 0.6  # every image: 4 of 6 = 0.667
    # Ties go together: 0.9 cannot be split, and the pair holds a wrong answer.
    assert C.select_threshold(np.array([0.9, 0.9, 0.8]), np.array([1, 0, 1], bool), 1.0) is None
    assert C.select_threshold(np.array([0.5]), np.array([False]), 0.5) is None


def test_operating_point_on_test_images_with_intervals():
    val_conf = np.array([0.99, 0.98, 0.97, 0.9, 0.8, 0.6])
    val_ok = np.array([1, 1, 1, 0, 1, 0], bool)
    test_conf = np.array([0.995, 0.97, 0.96, 0.5])
    test_ok = np.array([1, 0, 1, 1], bool)
    r = operating_point(val_conf, val_ok, test_conf, test_ok, 1.0)
    assert r["threshold"] == 0.97 and r["chosen_on"] == "validation"
    assert r["val_coverage"]["value"] == 0.5 and r["val_auto_accuracy"]["value"] == 1.0
    assert (r["test_coverage"]["count"], r["test_coverage"]["of"]) == (2, 4)
    assert r["test_auto_accuracy"]["value"] == 0.5
    lo, hi = r["test_auto_accuracy"]["ci95_low"], r["test_auto_accuracy"]["ci95_high"]
    assert 0 < lo < 0.5 < hi < 1


def test_no_threshold_reaching_the_target_says_so():
    r = operating_point([0.9, 0.8], [False, True], [0.7], [True], 0.995)
    assert r["threshold"] is None
    assert "no confidence threshold" in r["reason"] and "0.995" in r["reason"]
    # Every image then goes to review: coverage 0 of all, no automatic decision to score; and
    # the record has the keys of one that found a threshold (one schema for results.json).
    assert (r["val_coverage"]["count"], r["val_coverage"]["of"]) == (0, 2)
    assert (r["test_coverage"]["value"], r["test_auto_accuracy"]["of"]) == (0.0, 0)
    assert r["test_auto_accuracy"]["value"] is None
    found = operating_point([0.9, 0.8], [True, True], [0.7], [True], 0.995)
    assert found["reason"] is None and set(found) == set(r)


def test_risk_coverage_and_its_area():
    rc = C.risk_coverage(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 1], bool))
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["risk"] == pytest.approx([0, 0.5, 1 / 3, 0.25])
    assert rc["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.25) / 4)


def test_decide():
    assert C.decide(0.97, 0.97) == "auto"
    assert C.decide(0.96, 0.97) == "review"
    assert C.decide(1.0, None) == "review"


def test_explanations_draw_at_most_the_cap_of_misclassified_images():
    from bench.release.explain import default_selection

    labels = np.array([0, 1, 2] * 40)
    preds = np.where(np.arange(120) < 100, (labels + 1) % 3, labels)  # 100 wrong, 20 right
    sel = default_selection(labels, preds, 3, max_wrong=48)
    wrong = [i for i in sel if labels[i] != preds[i]]
    assert wrong == list(range(48))  # the first 48 by position
    assert [int(labels[i]) for i in sel[48:]] == [0, 1, 2]  # then one correct per class
