"""Relation inputs whitened by the known classes' within-class covariance (``model.whitening``).

A relation trained on a few classes learns where those classes lie and how they spread; on new
classes both change. With ``model.whitening = "known_classes"`` the relation sees features
centred at the mean of the known classes' means and whitened (ZCA) by their pooled within-class
covariance, so that a unit step means as much for any set of known classes. The statistics are
the training batch's (its classes, rotations included) in training and the support set's at test
time: they are statistics of the known classes, not learnt parameters, and need no finetuning.

The covariance is shrunk towards a multiple of the identity, ``(1 - s) * cov + s * trace(cov) /
d * I``. A batch of 128 images gives a within-class covariance of rank at most 128 - #classes <
512, which would make distances in training far smaller than at test time, so training whitens
with a running average over batches (``ReSeND.training_whitening``, kept with the batch-norm
statistics) and the batch's own centre.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

WHITENINGS = ("none", "known_classes")


class Whitening(NamedTuple):
    """``whiten(x) = (x - centre) @ matrix``."""

    centre: jax.Array  # (D,)
    matrix: jax.Array  # (D, D), symmetric


def within_class_covariance(features: jax.Array, onehot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, D) features and their (N, C) one-hot classes -> the mean of the class means (D,) and
    the pooled within-class covariance (D, D); classes absent from ``onehot`` are ignored."""
    features = features.astype(jnp.float32)
    onehot = onehot.astype(jnp.float32)
    counts = onehot.sum(0)
    present = counts > 0
    means = (onehot.T @ features) / jnp.maximum(counts, 1.0)[:, None]
    centre = jnp.sum(jnp.where(present[:, None], means, 0.0), 0) / jnp.maximum(present.sum(), 1)
    residuals = features - onehot @ means
    return centre, residuals.T @ residuals / features.shape[0]


def whitening_from_covariance(centre: jax.Array, covariance: jax.Array, shrinkage: float) -> Whitening:
    """The ZCA whitening of ``covariance`` shrunk by ``shrinkage``, around ``centre``."""
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"model.whitening_shrinkage must be in (0, 1], got {shrinkage}")
    dim = covariance.shape[0]
    isotropic = jnp.trace(covariance) / dim
    covariance = (1.0 - shrinkage) * covariance + shrinkage * isotropic * jnp.eye(dim)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    inverse_root = (eigenvectors * jax.lax.rsqrt(jnp.maximum(eigenvalues, 1e-12))) @ eigenvectors.T
    # No spread at all (every class a single image): nothing to whiten with, so the identity.
    return Whitening(centre, jnp.where(isotropic > 0, inverse_root, jnp.eye(dim)))


def within_class_whitening(features: jax.Array, onehot: jax.Array, shrinkage: float) -> Whitening:
    """The whitening of a labelled set's own statistics (a support set's at test time)."""
    return whitening_from_covariance(*within_class_covariance(features, onehot), shrinkage)


def whiten(features: jax.Array, whitening: Whitening) -> jax.Array:
    return (features.astype(jnp.float32) - whitening.centre) @ whitening.matrix
