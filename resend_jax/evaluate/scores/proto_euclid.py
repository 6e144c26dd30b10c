"""``proto_euclid``: ``1 - min_c |f - mu_c|`` over the class prototypes (raw features)."""

import numpy as np

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.scores import ScoreOutput, register


def squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, D) x (C, D) -> (N, C) squared Euclidean distances, in float64."""
    x, centres = x.astype(np.float64), centres.astype(np.float64)
    sq = (x * x).sum(1)[:, None] + (centres * centres).sum(1)[None] - 2 * x @ centres.T
    return np.maximum(sq, 0)


@register("proto_euclid")
def score(support: Features, test: Features) -> ScoreOutput:
    distances = np.sqrt(squared_distances(test.features, class_means(support)))
    return 1 - distances.min(1), distances.argmin(1)
