"""The open-set report's openset-imagenet CCR (nearest OSCR point, target-class thresholds)."""

import json

import numpy as np
import pytest

from resend_jax.openset import NEGATIVE, UNKNOWN
from resend_jax.openset.evaluate import openset_report, target_scores


def outputs(scores, predictions, labels):
    """Logits whose softmax max is the score, at the predicted class (4 classes)."""
    scores = np.asarray(scores, np.float64)
    logits = np.tile(np.log((1 - scores) / 3)[:, None], (1, 4))
    logits[np.arange(len(scores)), predictions] = np.log(scores)
    return {"feature": np.full((len(scores), 2), 2.0), "logits": logits, "label": np.asarray(labels)}


def test_target_scores():
    known = outputs([0.9, 0.95], [0, 1], [0, 0])  # the second is misclassified
    np.testing.assert_allclose(target_scores(known), [0.9, 0.05 / 3])
    np.testing.assert_allclose(target_scores(known, magnitude=True), np.sqrt(8) * np.array([0.9, 0.05 / 3]))


def test_report_ccr_at_fpr_nearest(tmp_path):
    # Known target-class scores 0.9, 0.8, 0.7, 0.6 (correct) and 0.05 / 3 (the misclassified one,
    # whose max is 0.95). Thresholds 0.0167, 0.6, 0.7, 0.8 (0.9, the largest, is dropped), counted
    # strictly above: (FPR, CCR) against the unknowns = (1, 4/5), (1/10, 3/5), (0, 2/5), (0, 1/5).
    # 0.001 and 0.01 are nearest FPR 0, 100% off -> None; 0.1 -> 3/5; 1.0 -> 4/5 (with the max
    # score as threshold instead, the nearest point to 1.0 would be FPR 0.1 and give None).
    known = outputs([0.9, 0.8, 0.7, 0.6, 0.95], [0, 1, 2, 3, 1], [0, 1, 2, 3, 0])
    negative = outputs([0.3, 0.4], [0, 0], [NEGATIVE] * 2)
    unknown = outputs([0.65, 0.5, 0.4] + [0.3] * 7, [0] * 10, [UNKNOWN] * 10)
    levels = (1e-3, 1e-2, 1e-1, 1.0)
    openset_report({"known": known, "negative": negative, "unknown": unknown}, tmp_path, 0.55, levels)
    report = json.loads((tmp_path / "openset_metrics.json").read_text())
    assert report["unknown"]["ccr_at_fpr_nearest"] == pytest.approx(
        {"0.001": None, "0.01": None, "0.1": 0.6, "1.0": 0.8}
    )
    # Against the negatives (0.3, 0.4): FPR 1 at 0.0167, 0 above -> only 1.0 is near a point.
    assert report["negative"]["ccr_at_fpr_nearest"] == pytest.approx(
        {"0.001": None, "0.01": None, "0.1": None, "1.0": 0.8}
    )
    assert report["unknown"]["ccr_at_fpr"] == pytest.approx(
        {"0.001": 0.6, "0.01": 0.6, "0.1": 0.8, "1.0": 0.8}
    )
