"""Metrics against scikit-learn, the reference implementations and hand-worked examples."""

import numpy as np
import pytest
from sklearn import metrics as sk

from resend_jax.evaluate import metrics


def hendrycks_fpr_at_recall(is_known, scores, recall_level=0.95):
    """``fpr_and_fdr_at_recall`` from Hendrycks' outlier-exposure code (the reference's FPR95)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, y = scores[order], is_known[order].astype(bool)
    threshold_idxs = np.r_[np.where(np.diff(scores))[0], y.size - 1]
    tps = np.cumsum(y)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(~y)


def openood_fpr(is_known, scores, tpr=0.95):
    """OpenOOD v1.5 ``auc_and_fpr_recall``: OOD positive on negated confidence."""
    fpr, tpr_curve, _ = sk.roc_curve((~is_known.astype(bool)).astype(int), -scores)
    return fpr[np.argmax(tpr_curve >= tpr)]


def cases():
    rng = np.random.default_rng(0)
    for n, tied in [(50, False), (300, False), (50, True), (1000, True)]:
        scores = rng.normal(size=n) + 0.8 * (is_known := rng.random(n) < 0.6)
        yield (np.round(scores, 1) if tied else scores), is_known
    yield np.array([1.0, 1.0, 1.0, 0.0, 0.0]), np.array([True, False, True, False, True])
    yield np.zeros(6), np.array([True, True, False, False, True, False])


@pytest.mark.parametrize("case", list(cases()))
def test_metrics_equal_sklearn_and_references(case):
    scores, is_known = case
    assert metrics.auroc(scores, is_known) == pytest.approx(sk.roc_auc_score(is_known, scores), abs=1e-12)
    assert metrics.aupr_in(scores, is_known) == pytest.approx(
        sk.average_precision_score(is_known, scores), abs=1e-12
    )
    assert metrics.aupr_out(scores, is_known) == pytest.approx(
        sk.average_precision_score(~is_known, -scores), abs=1e-12
    )
    assert metrics.fpr_at_tpr(scores, is_known) == hendrycks_fpr_at_recall(is_known, scores)
    assert metrics.fpr_at_tpr_openood(scores, is_known) == openood_fpr(is_known, scores)
    for drop in (False, True):
        for ours, theirs in zip(
            metrics.roc_curve(scores, is_known, drop), sk.roc_curve(is_known, scores, drop_intermediate=drop)
        ):
            np.testing.assert_allclose(ours, theirs)


def test_fpr95_worked_example_in_both_conventions():
    # 20 knowns at 0.1 .. 2.0; unknowns 0.05, 0.15, 0.25, 1.45. Known recall 19 / 20 = 0.95 holds at
    # thresholds 0.2 and 0.15; Hendrycks' code takes the lower, 0.15, where the unknowns 0.15, 0.25
    # and 1.45 pass -> 3 / 4. OpenOOD flags all 4 unknowns only at s <= 1.45, which also flags the
    # 14 knowns 0.1 .. 1.4 -> 14 / 20.
    known = np.arange(1, 21) / 10
    unknown = np.array([0.05, 0.15, 0.25, 1.45])
    scores = np.r_[known, unknown]
    is_known = np.r_[np.ones(20, bool), np.zeros(4, bool)]
    assert metrics.fpr_at_tpr(scores, is_known) == 0.75
    assert metrics.fpr_at_tpr_openood(scores, is_known) == 0.7


def test_fpr95_ties_take_nearest_distinct_threshold():
    # Knowns 1, 1, 1, 1, 0.5 and unknowns 1, 0.2: recall is 0.8 at threshold 1 and 1.0 at 0.5;
    # 1.0 is nearer 0.95, and the unknown at 1 passes it -> 1 / 2.
    scores = np.array([1, 1, 1, 1, 0.5, 1, 0.2])
    is_known = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    assert metrics.fpr_at_tpr(scores, is_known) == 0.5


def test_auroc_and_aupr_worked_example():
    # Known 0.9, 0.4; unknown 0.6, 0.1: 3 of 4 (known, unknown) pairs ordered right.
    scores, is_known = np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0], bool)
    assert metrics.auroc(scores, is_known) == 0.75
    assert metrics.aupr_in(scores, is_known) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics.aupr_out(scores, is_known) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_closed_set_accuracy():
    assert metrics.closed_set_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError, match="as many predictions"):
        metrics.closed_set_accuracy([0, 1], [0])


def test_oscr_equals_threshold_loop():
    rng = np.random.default_rng(1)
    known_scores = np.round(rng.random(40), 1)
    known_correct = rng.random(40) < 0.7
    unknown_scores = np.round(rng.random(25) * 0.8, 1)
    fpr, ccr, thresholds = metrics.oscr_curve(known_scores, known_correct, unknown_scores)
    assert thresholds[0] == np.inf and fpr[0] == 0 and ccr[0] == 0
    np.testing.assert_array_equal(thresholds[1:], np.unique(np.r_[known_scores, unknown_scores])[::-1])
    for f, c, tau in zip(fpr[1:], ccr[1:], thresholds[1:]):
        assert c == np.sum(known_correct & (known_scores >= tau)) / 40
        assert f == np.sum(unknown_scores >= tau) / 25
    levels = metrics.ccr_at_fpr(known_scores, known_correct, unknown_scores, [0.0, 0.1, 1.0])
    for level, value in levels.items():
        assert value == max(c for f, c in zip(fpr, ccr) if f <= level)
    assert levels[1.0] == known_correct.mean()


def test_ccr_at_fpr_worked_example():
    # Known (score, correct): (0.9, y) (0.8, n) (0.7, y) (0.3, y); unknown 0.75, 0.2.
    # tau 0.8 -> CCR 1/4 at FPR 0; tau 0.3 -> CCR 3/4 at FPR 1/2; tau 0.2 -> 3/4 at FPR 1.
    levels = metrics.ccr_at_fpr([0.9, 0.8, 0.7, 0.3], [1, 0, 1, 1], [0.75, 0.2], [0.0, 0.4, 0.5])
    assert levels == {0.0: 0.25, 0.4: 0.25, 0.5: 0.75}


def test_compute_metrics_and_errors():
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    is_known = np.array([1, 1, 0, 0], bool)
    result = metrics.compute_metrics(scores, is_known, predictions=[0, 1, 0, 0], labels=[0, 0, -1, -1])
    assert result == {
        "auroc": 0.75,
        "fpr95": 0.5,
        "aupr_in": pytest.approx(5 / 6),
        "aupr_out": pytest.approx(5 / 6),
        "closed_set_acc": 0.5,
        "n_known": 2,
        "n_unknown": 2,
    }
    assert "closed_set_acc" not in metrics.compute_metrics(scores, is_known)
    assert "| resend | 75.00 | 50.00 |" in metrics.metrics_table({"resend": result})
    with pytest.raises(ValueError, match="no unknown images"):
        metrics.auroc(scores, np.ones(4, bool))
    with pytest.raises(ValueError, match="no known images"):
        metrics.compute_metrics(scores, np.zeros(4, bool))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auroc(scores, is_known[:3])
