"""Metrics against scikit-learn, the reference implementations and hand-worked examples."""

import numpy as np
import pytest
from sklearn import metrics as sk

from resend_jax.evaluate import metrics, report


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


def knn_ood_fpr(known, novel):
    """knn-ood's ``util/metrics.py`` ``get_curve``: FPR at the 5% known-score threshold."""
    known, novel = np.sort(known), np.sort(novel)
    threshold = known[round(0.05 * known.shape[0])]
    return np.sum(novel > threshold) / float(novel.shape[0])


def openood_aupr(is_known, conf):
    """OpenOOD v1.5 ``auc_and_fpr_recall``: AUPR-in and AUPR-out as ``auc`` over the PR curves."""
    ood_indicator = (~is_known.astype(bool)).astype(int)
    precision_in, recall_in, _ = sk.precision_recall_curve(1 - ood_indicator, conf)
    precision_out, recall_out, _ = sk.precision_recall_curve(ood_indicator, -conf)
    return sk.auc(recall_in, precision_in), sk.auc(recall_out, precision_out)


def openset_imagenet_ccr_at_fpr(target_score, correctly_predicted, max_score, fpr_values):
    """openset-imagenet's ``calculate_oscr`` loop, then the OSCR point nearest each FPR value,
    missing (None) when 10% or more off it (``REFERENCE.md`` section 7)."""
    total_kn, total_unk = len(target_score), len(max_score)
    ccr, fpr = [], []
    for tau in np.unique(target_score)[:-1]:
        ccr.append((correctly_predicted & (target_score > tau)).sum() / total_kn)
        fpr.append((max_score > tau).sum() / total_unk)
    ccr, fpr = np.array(ccr), np.array(fpr)
    ccrs = {}
    for t in fpr_values:
        i = np.argmin(np.abs(fpr - t))
        ccrs[t] = ccr[i] if abs(fpr[i] - t) / t < 0.1 else None
    return ccrs


def cases():
    rng = np.random.default_rng(0)
    for n, tied in [(50, False), (300, False), (5000, False), (50, True), (1000, True), (5000, True)]:
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
    assert metrics.fpr_at_tpr_knn(scores, is_known) == knn_ood_fpr(scores[is_known], scores[~is_known])
    aupr_in, aupr_out = openood_aupr(is_known, scores)
    assert metrics.aupr_in_trapz(scores, is_known) == pytest.approx(aupr_in, abs=1e-12)
    assert metrics.aupr_out_trapz(scores, is_known) == pytest.approx(aupr_out, abs=1e-12)
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


@pytest.mark.parametrize("n_known", [10, 20, 30, 50, 70, 90, 103, 110, 130])
def test_fpr95_knn_rounds_half_to_even_as_python(n_known):
    # round(0.05 * n) is 0 at n = 10 (0.5), 1 at 30 (1.5000000000000002), 2 at 50 (2.5): the index
    # must come from the same float expression, not from 1 - 0.95.
    known = np.arange(n_known, dtype=float)
    unknown = np.arange(n_known) + 0.5
    scores, is_known = np.r_[known, unknown], np.r_[np.ones(n_known, bool), np.zeros(n_known, bool)]
    assert metrics.fpr_at_tpr_knn(scores, is_known) == knn_ood_fpr(known, unknown)


def test_fpr95_knn_and_hendrycks_differ_at_103_known_57_unknown():
    # Knowns 1 .. 103: the 5% threshold is sorted_known[round(5.15)] = 6, recall 98 / 103. Unknowns:
    # 12 above 6, 4 between 5 and 6, 41 below 5. knn-ood counts those above 6 -> 12 / 57; Hendrycks'
    # takes the lowest threshold of recall 98 / 103, 5.2, which also accepts the 4 -> 16 / 57.
    known = np.arange(1, 104, dtype=float)
    unknown = np.r_[np.linspace(10, 90, 12), [5.2, 5.4, 5.6, 5.8], np.linspace(0.1, 4.9, 41)]
    scores, is_known = np.r_[known, unknown], np.r_[np.ones(103, bool), np.zeros(57, bool)]
    assert metrics.fpr_at_tpr_knn(scores, is_known) == knn_ood_fpr(known, unknown) == 12 / 57
    assert metrics.fpr_at_tpr(scores, is_known) == hendrycks_fpr_at_recall(is_known, scores) == 16 / 57
    assert round(100 * 12 / 57, 2) == 21.05 and round(100 * 16 / 57, 2) == 28.07


def test_aupr_trapz_differs_from_average_precision():
    # Known 0.9, 0.4; unknown 0.6, 0.1. PR points (recall, precision) from (0, 1): (0.5, 1),
    # (0.5, 0.5), (1, 2/3), (1, 0.5): trapezoids 0.5 + 0.5 * (0.5 + 2/3) / 2 = 0.7917, average
    # precision 0.5 + 0.5 * 2/3 = 0.8333.
    scores, is_known = np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0], bool)
    assert metrics.aupr_in_trapz(scores, is_known) == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3))
    assert metrics.aupr_in(scores, is_known) == pytest.approx(5 / 6)


@pytest.mark.parametrize("n, tied", [(40, False), (40, True), (3000, False), (3000, True)])
def test_ccr_at_fpr_nearest_equals_openset_imagenet(n, tied):
    rng = np.random.default_rng(n + tied)
    known_scores = rng.random(n) ** 0.3
    unknown_scores = rng.random(n // 2)
    if tied:
        known_scores, unknown_scores = np.round(known_scores, 1), np.round(unknown_scores, 1)
    correct = rng.random(n) < 0.8
    levels = (1e-3, 1e-2, 5e-2, 0.1, 0.25, 0.3, 1.0)
    ours = metrics.ccr_at_fpr_nearest(known_scores, correct, unknown_scores, levels)
    theirs = openset_imagenet_ccr_at_fpr(known_scores, correct, unknown_scores, levels)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert any(v is None for v in ours.values()) and any(v is not None for v in ours.values())


def test_ccr_at_fpr_nearest_worked_example():
    # Known (target score, correct): (0.9, y) (0.8, n) (0.7, y) (0.3, y); unknown 0.75, 0.2, 0.1,
    # 0.05. Thresholds 0.3, 0.7, 0.8 (the largest, 0.9, is dropped), counted strictly above:
    # FPR 1/4, 1/4, 0 and CCR 2/4, 1/4, 1/4. FPR 0.25 is nearest 0.26 (4% off) -> CCR 0.5 at the
    # lowest threshold; 0.2 is 25% off 0.25 -> None; 0.001 is nearest FPR 0, 100% off -> None.
    ccr = metrics.ccr_at_fpr_nearest(
        [0.9, 0.8, 0.7, 0.3], [1, 0, 1, 1], [0.75, 0.2, 0.1, 0.05], [0.001, 0.2, 0.26]
    )
    assert ccr == {0.001: None, 0.2: None, 0.26: 0.5}
    # FPR 9 / 16 at the threshold 0.3: 6.25% off 0.6 -> CCR 2 / 3; exactly 10% off 0.625 -> None.
    unknown = np.r_[np.full(9, 0.5), np.full(7, 0.1)]
    ccr = metrics.ccr_at_fpr_nearest([0.9, 0.8, 0.3], [1, 1, 1], unknown, [0.6, 0.625])
    assert ccr == {0.6: 2 / 3, 0.625: None}
    with pytest.raises(ValueError, match="must be > 0"):
        metrics.ccr_at_fpr_nearest([0.9, 0.3], [1, 1], [0.5], [0.0])
    with pytest.raises(ValueError, match="2 distinct known target scores"):
        metrics.ccr_at_fpr_nearest([0.9, 0.9], [1, 1], [0.5])


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
        "fpr95_knn": 0.5,
        "fpr95_openood": 0.5,
        "aupr_in": pytest.approx(5 / 6),
        "aupr_out": pytest.approx(5 / 6),
        "aupr_in_trapz": pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3)),
        "aupr_out_trapz": pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3)),
        "closed_set_acc": 0.5,
        "n_known": 2,
        "n_unknown": 2,
    }
    assert list(result) == list(metrics.METRIC_NAMES)
    assert "closed_set_acc" not in metrics.compute_metrics(scores, is_known)
    table = metrics.metrics_table({"resend": result})
    assert table.splitlines()[0] == (
        "| method | AUROC | FPR95 | FPR95 knn-ood | FPR95 OpenOOD | AUPR-in | AUPR-out | AUPR-in trapz "
        "| AUPR-out trapz | closed-set acc | known | unknown |"
    )
    assert (
        "| resend | 75.00 | 50.00 | 50.00 | 50.00 | 83.33 | 83.33 | 79.17 | 79.17 | 50.00 | 2 | 2 |" in table
    )
    with pytest.raises(ValueError, match="no unknown images"):
        metrics.auroc(scores, np.ones(4, bool))
    with pytest.raises(ValueError, match="no known images"):
        metrics.compute_metrics(scores, np.zeros(4, bool))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auroc(scores, is_known[:3])


def test_report_conventions_name_every_metric():
    for name in [*metrics.METRIC_NAMES[:8], "ccr_at_fpr", "ccr_at_fpr_nearest"]:
        assert f"`{name}`" in report.CONVENTIONS, name
    for title in ("FPR95 knn-ood", "FPR95 OpenOOD", "AUPR-out trapz"):
        assert title in report.CONVENTIONS, title
