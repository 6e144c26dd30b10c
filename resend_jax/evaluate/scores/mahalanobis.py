"""``mahalanobis``: Lee et al. (2018), ``-min_c (f - mu_c)^T S^+ (f - mu_c)``, tied covariance.

``S`` is the covariance of the support features around their class means, pooled over classes;
its pseudo-inverse is used, so fewer support images than dimensions still work. With few images
per class the smallest nonzero eigenvalues of ``S`` are noise and their inverses dominate:
``shrinkage = s > 0`` inverts ``(1 - s) * S + s * trace(S) / d * I`` instead (a deviation, off
by default; docs/transfer.md).
"""

import numpy as np

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.scores import ScoreOutput, register


@register("mahalanobis")
def score(support: Features, test: Features, *, chunk: int = 8192, shrinkage: float = 0.0) -> ScoreOutput:
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"mahalanobis: shrinkage must be in [0, 1], got {shrinkage}")
    means = class_means(support).astype(np.float64)
    centred = support.features - means[support.labels]
    covariance = centred.T @ centred / len(centred)
    if shrinkage > 0:
        dim = covariance.shape[0]
        covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        precision = np.linalg.inv(covariance)
    else:
        precision = np.linalg.pinv(covariance, hermitian=True)
    means_term = np.einsum("cd,de,ce->c", means, precision, means)
    distances = []
    for start in range(0, len(test), chunk):
        x = test.features[start : start + chunk].astype(np.float64)
        projected = x @ precision
        distances.append((projected * x).sum(1)[:, None] - 2 * projected @ means.T + means_term[None])
    distances = np.concatenate(distances)
    return -distances.min(1), distances.argmin(1)
