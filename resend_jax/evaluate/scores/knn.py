"""``knn``: Sun et al. (2022), ``-|f - f_(k)|`` to the k-th nearest support feature, L2-normalised.

Exact search (``neighbours.kth_nearest_sq_distance``). ``k = 50`` is the paper's CIFAR value; a
support set smaller than ``k`` raises an error asking for a smaller ``--config.scores.knn.k``.
"""

import numpy as np

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.neighbours import kth_nearest_sq_distance, l2_normalise
from resend_jax.evaluate.scores import ScoreOutput, register


@register("knn")
def score(support: Features, test: Features, *, k: int = 50) -> ScoreOutput:
    if k > len(support):
        raise ValueError(f"knn: k = {k} but the support set has {len(support)} images; set a smaller k")
    sq = kth_nearest_sq_distance(l2_normalise(test.features), l2_normalise(support.features), k)
    return -np.sqrt(sq), None
