import math

import numpy as np
import pytest

from bench import metrics as M


def test_confusion_matrix_against_hand_count():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 0, 1, 1, 2, 0, 2, 1]
    cm = M.confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]


def test_classification_report_hand_computed():
    cm = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 2]])
    rep = M.classification_report(cm, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(6 / 9)
    pa, pb, pc = rep["per_class"]
    # a: precision 2/3, recall 2/3; b: precision 2/4, recall 1; c: precision 1, recall 2/4
    assert (pa["precision"], pa["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert (pb["precision"], pb["recall"]) == pytest.approx((0.5, 1.0))
    assert (pc["precision"], pc["recall"]) == pytest.approx((1.0, 0.5))
    f1 = [2 / 3, 2 * 0.5 / 1.5, 2 * 0.5 / 1.5]
    assert pb["f1"] == pytest.approx(2 / 3)
    assert rep["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert [p["support"] for p in rep["per_class"]] == [3, 2, 4]


def test_never_predicted_class_scores_zero_not_nan():
    cm = np.array([[3, 0], [2, 0]])
    rep = M.classification_report(cm, ["x", "y"])
    assert rep["per_class"][1]["precision"] == 0.0
    assert rep["per_class"][1]["f1"] == 0.0
    assert not math.isnan(rep["macro_f1"])


def test_clopper_pearson_known_values():
    # Reference values (R: binom.test(x, n)$conf.int).
    lo, hi = M.clopper_pearson(7, 10)
    assert lo == pytest.approx(0.3475471, abs=1e-6)
    assert hi == pytest.approx(0.9332605, abs=1e-6)
    lo, hi = M.clopper_pearson(358, 360)
    assert lo == pytest.approx(0.9800736, abs=1e-5)
    assert hi == pytest.approx(0.9993262, abs=1e-5)
    assert M.clopper_pearson(0, 20)[0] == 0.0
    assert M.clopper_pearson(20, 20)[1] == 1.0
    assert M.clopper_pearson(20, 20)[0] == pytest.approx(0.025 ** (1 / 20), abs=1e-9)


def test_mean_ci_over_seeds_uses_student_t():
    stats = M.mean_ci([0.90, 0.92, 0.94])
    assert stats["mean"] == pytest.approx(0.92)
    assert stats["std"] == pytest.approx(0.02)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert stats["ci95"] == pytest.approx([0.92 - half, 0.92 + half])
    assert M.mean_ci([0.5])["ci95"] is None


@pytest.mark.parametrize(
    "a_only, b_only, expected",
    [
        # hand-computed: 2 * sum_{i<=k} C(n, i) / 2^n
        (0, 0, 1.0),
        (1, 0, 1.0),  # one image is never evidence
        (0, 5, 2 / 32),  # 2 * (1/32)
        (1, 9, 2 * 11 / 1024),  # 2 * (1 + 10) / 2^10
        (3, 3, 1.0),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
    ],
)
def test_mcnemar_exact_against_hand_computed_binomial_tails(a_only, b_only, expected):
    assert M.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)
    assert M.mcnemar_exact(b_only, a_only) == pytest.approx(expected, rel=1e-9)  # symmetric


def test_mcnemar_one_image_apart_is_indistinguishable():
    # 99.4% vs 99.7% on 360 images: one image, p = 1, not a winner
    assert M.mcnemar_exact(1, 0) >= 0.05
    assert M.mcnemar_exact(12, 1) < 0.05
