"""Novelty-detection metrics, vectorised NumPy, ties handled as scikit-learn does.

Conventions (the reference's, ``REFERENCE.md`` section 3): a higher score means more normal,
known test images are the positive class. Every curve is built at the distinct score values, so
tied scores move together, as in ``sklearn.metrics.roc_curve``.

- ``auroc``: area under the ROC curve, known positive (= ``roc_auc_score(is_known, scores)``);
  the same number with unknowns positive and scores negated.
- ``fpr_at_tpr``: Hendrycks' ``fpr_and_fdr_at_recall`` as ReSeND reports it: the distinct
  threshold whose known recall is nearest ``tpr`` (no interpolation), then the fraction of
  unknowns scored at or above it.
- ``fpr_at_tpr_knn``: knn-ood's and MODE's ``util/metrics.py``: the threshold is the known
  score at index ``round(0.05 * N_known)`` of the ascending sort, then the fraction of unknowns
  scored strictly above it. Hendrycks' takes the lowest threshold of the same recall instead,
  which also accepts the unknowns scored between that known and the next lower one.
- ``fpr_at_tpr_openood``: OpenOOD v1.5's ``auc_and_fpr_recall``: unknowns positive, scores
  negated, ``roc_curve`` with its default ``drop_intermediate``, FPR (knowns accepted as
  unknown) at the first point with TPR >= ``tpr``. The three conventions give different numbers.
- ``aupr_in`` / ``aupr_out``: average precision with knowns (scores) / unknowns (negated
  scores) positive, as ``average_precision_score``; ``aupr_in_trapz`` / ``aupr_out_trapz``:
  OpenOOD's, the trapezoid over ``precision_recall_curve`` (``sklearn.metrics.auc``).
- ``oscr_curve`` / ``ccr_at_fpr``: open-set classification rate (``REFERENCE.md`` section 5):
  at threshold tau, CCR = correctly classified knowns with score >= tau / all knowns and
  FPR = unknowns with score >= tau / all unknowns.
- ``ccr_at_fpr_nearest``: openset-imagenet's table: the OSCR point (thresholds = the knowns'
  target-class scores, counted strictly above) whose FPR is nearest each level, None when it
  is 10% or more off the level.
"""

from collections.abc import Iterable, Mapping

import numpy as np

METRIC_NAMES = (
    "auroc",
    "fpr95",
    "fpr95_knn",
    "fpr95_openood",
    "aupr_in",
    "aupr_out",
    "aupr_in_trapz",
    "aupr_out_trapz",
    "closed_set_acc",
    "n_known",
    "n_unknown",
)


def _check(scores: np.ndarray, is_known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64).ravel()
    is_known = np.asarray(is_known).ravel().astype(bool)
    if scores.shape != is_known.shape:
        raise ValueError(f"scores and is_known differ in length: {scores.shape[0]} vs {is_known.shape[0]}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{np.count_nonzero(~np.isfinite(scores))} scores are NaN or infinite")
    if is_known.all() or not is_known.any():
        missing = "unknown" if is_known.all() else "known"
        raise ValueError(
            f"the test set has no {missing} images ({is_known.sum()} known, {(~is_known).sum()} unknown): "
            "novelty metrics need both; change the test set or the known classes"
        )
    return scores, is_known


def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, thresholds) at each distinct score, descending."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(positive)[last_of_tie].astype(np.float64)
    fps = 1 + last_of_tie - tps
    return fps, tps, scores[last_of_tie]


def roc_curve(
    scores: np.ndarray, positive: np.ndarray, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as ``sklearn.metrics.roc_curve``, starting at (0, 0, inf)."""
    fps, tps, thresholds = _curve(np.asarray(scores, np.float64), np.asarray(positive, bool))
    if drop_intermediate and len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def auroc(scores: np.ndarray, is_known: np.ndarray) -> float:
    """Area under the ROC curve with known images positive (trapezoidal, as scikit-learn)."""
    fpr, tpr, _ = roc_curve(*_check(scores, is_known))
    return float(np.trapezoid(tpr, fpr))


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    fps, tps, _ = _curve(scores, positive)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _aupr_trapezoid(scores: np.ndarray, positive: np.ndarray) -> float:
    """Trapezoid over the precision-recall curve from (recall 0, precision 1), as OpenOOD."""
    fps, tps, _ = _curve(scores, positive)
    precision = np.r_[1.0, tps / (tps + fps)]
    recall = np.r_[0.0, tps / tps[-1]]
    return float(np.trapezoid(precision, recall))


def aupr_in(scores: np.ndarray, is_known: np.ndarray) -> float:
    """Average precision with known images positive, ranked by score."""
    scores, is_known = _check(scores, is_known)
    return _average_precision(scores, is_known)


def aupr_out(scores: np.ndarray, is_known: np.ndarray) -> float:
    """Average precision with unknown images positive, ranked by negated score."""
    scores, is_known = _check(scores, is_known)
    return _average_precision(-scores, ~is_known)


def aupr_in_trapz(scores: np.ndarray, is_known: np.ndarray) -> float:
    """OpenOOD's AUPR-in: ``auc(recall, precision)``, knowns positive, ranked by score."""
    scores, is_known = _check(scores, is_known)
    return _aupr_trapezoid(scores, is_known)


def aupr_out_trapz(scores: np.ndarray, is_known: np.ndarray) -> float:
    """OpenOOD's AUPR-out: ``auc(recall, precision)``, unknowns positive, ranked by negated score."""
    scores, is_known = _check(scores, is_known)
    return _aupr_trapezoid(-scores, ~is_known)


def fpr_at_tpr(scores: np.ndarray, is_known: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of unknowns accepted at the threshold whose known recall is nearest ``tpr``.

    Hendrycks' ``fpr_and_fdr_at_recall`` (the reference's FPR95): thresholds are the distinct
    scores down to the first one that reaches full recall, plus an empty point at recall 1.
    """
    scores, is_known = _check(scores, is_known)
    fps, tps, _ = _curve(scores, is_known)
    last = int(np.searchsorted(tps, tps[-1]))
    recall = np.r_[tps[last::-1] / tps[-1], 1.0]
    fps = np.r_[fps[last::-1], 0.0]
    return float(fps[np.argmin(np.abs(recall - tpr))] / np.count_nonzero(~is_known))


def fpr_at_tpr_knn(scores: np.ndarray, is_known: np.ndarray, rejected: float = 0.05) -> float:
    """knn-ood's / MODE's FPR95: fraction of unknowns strictly above ``sorted_known[round(rejected * N)]``.

    ``sorted_known`` ascending, ``round`` Python's (half to even); ``rejected`` is the reference's
    literal 0.05 rather than ``1 - tpr``, whose float differs and can round to another index.
    """
    scores, is_known = _check(scores, is_known)
    known = np.sort(scores[is_known])
    threshold = known[round(rejected * known.size)]
    return float(np.mean(scores[~is_known] > threshold))


def fpr_at_tpr_openood(scores: np.ndarray, is_known: np.ndarray, tpr: float = 0.95) -> float:
    """OpenOOD's FPR@``tpr``: unknowns positive, fraction of knowns flagged when TPR >= ``tpr``."""
    scores, is_known = _check(scores, is_known)
    fpr, tpr_curve, _ = roc_curve(-scores, ~is_known, drop_intermediate=True)
    return float(fpr[np.argmax(tpr_curve >= tpr)])


def closed_set_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (known) test images whose predicted class equals the label."""
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(
            f"need as many predictions as labels (>= 1), got {predictions.size} and {labels.size}"
        )
    return float(np.mean(predictions == labels))


def oscr_curve(
    known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, ccr, thresholds) at every distinct score, threshold descending from (0, 0, inf)."""
    known_scores = np.asarray(known_scores, np.float64).ravel()
    known_correct = np.asarray(known_correct, bool).ravel()
    unknown_scores = np.sort(np.asarray(unknown_scores, np.float64).ravel())
    if known_scores.shape != known_correct.shape or not known_scores.size or not unknown_scores.size:
        raise ValueError(
            "OSCR needs >= 1 known and >= 1 unknown score and one known_correct flag per known score, "
            f"got {known_scores.size} known, {known_correct.size} flags, {unknown_scores.size} unknown"
        )
    thresholds = np.unique(np.r_[known_scores, unknown_scores])[::-1]
    correct = np.sort(known_scores[known_correct])
    ccr = (correct.size - np.searchsorted(correct, thresholds, side="left")) / known_scores.size
    fpr = (
        unknown_scores.size - np.searchsorted(unknown_scores, thresholds, side="left")
    ) / unknown_scores.size
    return np.r_[0.0, fpr], np.r_[0.0, ccr], np.r_[np.inf, thresholds]


def ccr_at_fpr(
    known_scores: np.ndarray,
    known_correct: np.ndarray,
    unknown_scores: np.ndarray,
    fpr_levels: Iterable[float] = (1e-3, 1e-2, 1e-1),
) -> dict[float, float]:
    """Highest CCR over thresholds whose FPR is at most each level (0 if only tau = inf fits)."""
    fpr, ccr, _ = oscr_curve(known_scores, known_correct, unknown_scores)
    return {float(level): float(ccr[fpr <= level].max()) for level in fpr_levels}


def ccr_at_fpr_nearest(
    known_target_scores: np.ndarray,
    known_correct: np.ndarray,
    unknown_scores: np.ndarray,
    fpr_levels: Iterable[float] = (1e-3, 1e-2, 1e-1),
    tolerance: float = 0.1,
) -> dict[float, float | None]:
    """openset-imagenet's CCR at each FPR level: the OSCR point whose FPR is nearest the level.

    Thresholds are the distinct target-class scores of the knowns but the largest; at tau,
    CCR = correct knowns with target score > tau / all knowns and FPR = unknowns with score > tau
    / all unknowns. The nearest point may lie above the level; None when
    ``|fpr - level| / level >= tolerance``. Of equally near points, the lowest threshold's.
    """
    known_target_scores = np.asarray(known_target_scores, np.float64).ravel()
    known_correct = np.asarray(known_correct, bool).ravel()
    unknown_scores = np.sort(np.asarray(unknown_scores, np.float64).ravel())
    thresholds = np.unique(known_target_scores)[:-1]
    if known_target_scores.shape != known_correct.shape or not thresholds.size or not unknown_scores.size:
        raise ValueError(
            "need >= 2 distinct known target scores, one known_correct flag per known and >= 1 unknown "
            f"score, got {np.unique(known_target_scores).size} distinct, {known_correct.size} flags, "
            f"{unknown_scores.size} unknown"
        )
    correct = np.sort(known_target_scores[known_correct])
    ccr = (correct.size - np.searchsorted(correct, thresholds, side="right")) / known_target_scores.size
    fpr = (
        unknown_scores.size - np.searchsorted(unknown_scores, thresholds, side="right")
    ) / unknown_scores.size
    result = {}
    for level in map(float, fpr_levels):
        if level <= 0:
            raise ValueError(f"fpr_levels must be > 0 (the tolerance is relative), got {level}")
        nearest = int(np.argmin(np.abs(fpr - level)))
        result[level] = float(ccr[nearest]) if abs(fpr[nearest] - level) / level < tolerance else None
    return result


def compute_metrics(
    scores: np.ndarray,
    is_known: np.ndarray,
    predictions: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, float | int]:
    """``METRIC_NAMES`` for one score: every convention side by side (module docstring).

    ``closed_set_acc`` needs ``predictions`` and ``labels`` (known class indices; only the known
    test images count).
    """
    scores, is_known = _check(scores, is_known)
    metrics = {
        "auroc": auroc(scores, is_known),
        "fpr95": fpr_at_tpr(scores, is_known, 0.95),
        "fpr95_knn": fpr_at_tpr_knn(scores, is_known),
        "fpr95_openood": fpr_at_tpr_openood(scores, is_known, 0.95),
        "aupr_in": aupr_in(scores, is_known),
        "aupr_out": aupr_out(scores, is_known),
        "aupr_in_trapz": aupr_in_trapz(scores, is_known),
        "aupr_out_trapz": aupr_out_trapz(scores, is_known),
    }
    if predictions is not None and labels is not None:
        predictions, labels = np.asarray(predictions)[is_known], np.asarray(labels)[is_known]
        metrics["closed_set_acc"] = closed_set_accuracy(predictions, labels)
    metrics["n_known"] = int(is_known.sum())
    metrics["n_unknown"] = int((~is_known).sum())
    return metrics


TABLE_COLUMNS = {
    "auroc": "AUROC",
    "fpr95": "FPR95",
    "fpr95_knn": "FPR95 knn-ood",
    "fpr95_openood": "FPR95 OpenOOD",
    "aupr_in": "AUPR-in",
    "aupr_out": "AUPR-out",
    "aupr_in_trapz": "AUPR-in trapz",
    "aupr_out_trapz": "AUPR-out trapz",
    "closed_set_acc": "closed-set acc",
}


def metrics_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table, one row per method: ``TABLE_COLUMNS`` in percent, then the image counts."""
    header = "| method | " + " | ".join(TABLE_COLUMNS.values()) + " | known | unknown |"
    lines = [header, "|" + " --- |" * (len(TABLE_COLUMNS) + 3)]
    for name, m in results.items():
        cells = [f"{100 * m[k]:.2f}" if k in m else "-" for k in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['n_known']} | {m['n_unknown']} |")
    return "\n".join(lines)
