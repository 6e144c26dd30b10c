"""Relation inputs whitened by the known classes' within-class covariance (``model.whitening``).

A relation trained on a few classes learns where those classes lie and how they spread; on new
classes both change. With ``model.whitening = "known_classes"`` the relation sees features
centred at the mean of the known classes' means and whitened (ZCA) by their pooled within-class
covariance, so that a unit step means as much for any set of known classes. The statistics are
the training batch's (its classes, rotations included) in training and the support set's at test
time: they are statistics of the known classes, not learnt parameters, and need no finetuning.

With 128 images a batch's within-class covariance has rank at most 128 - #classes < 512, so it
is shrunk towards a multiple of the identity: ``(1 - s) * cov + s * trace(cov) / d * I``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

WHITENINGS = ("none", "known_classes")


class Whitening(NamedTuple):
    """``whiten(x) = (x - centre) @ matrix``."""

    centre: jax.Array  # (D,)
    matrix: jax.Array  # (D, D), symmetric


def within_class_whitening(features: jax.Array, onehot: jax.Array, shrinkage: float) -> Whitening:
    """(N, D) features and their (N, C) one-hot classes -> the ZCA whitening of the pooled
    within-class covariance, shrunk by ``shrinkage``; classes absent from ``onehot`` are ignored."""
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"model.whitening_shrinkage must be in (0, 1], got {shrinkage}")
    features = features.astype(jnp.float32)
    onehot = onehot.astype(jnp.float32)
    counts = onehot.sum(0)
    present = counts > 0
    means = (onehot.T @ features) / jnp.maximum(counts, 1.0)[:, None]
    centre = jnp.sum(jnp.where(present[:, None], means, 0.0), 0) / jnp.maximum(present.sum(), 1)
    residuals = features - onehot @ means
    covariance = residuals.T @ residuals / features.shape[0]
    dim = features.shape[1]
    covariance = (1.0 - shrinkage) * covariance + shrinkage * jnp.trace(covariance) / dim * jnp.eye(dim)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    inverse_root = (eigenvectors * jax.lax.rsqrt(jnp.maximum(eigenvalues, 1e-12))) @ eigenvectors.T
    return Whitening(centre, inverse_root)


def whiten(features: jax.Array, whitening: Whitening) -> jax.Array:
    return (features.astype(jnp.float32) - whitening.centre) @ whitening.matrix
