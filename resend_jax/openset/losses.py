"""The entropic open-set loss, the Objectosphere penalty and the exercise's confidence.

``entropic_openset_loss`` is a ``jax.custom_vjp`` whose backward pass is the analytic
``dJ/dz = y - t`` (valid because every target vector sums to one);
``entropic_openset_loss_log_softmax`` is the same loss left to autodiff.
Both sum over classes and average over the batch: averaging over classes too is a known bug
that divides the loss and its gradient by ``O``.
"""

import jax
import jax.numpy as jnp


def entropic_openset_loss_log_softmax(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``mean_n -sum_o t_no log softmax(z_n)_o`` for (N, O) logits and target vectors."""
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


@jax.custom_vjp
def entropic_openset_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The entropic open-set loss with the analytic gradient ``(y - t) / N`` w.r.t. the logits."""
    return entropic_openset_loss_log_softmax(logits, targets)


def _eos_forward(logits, targets):
    log_y = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.sum(targets * log_y, axis=-1)), (log_y, targets)


def _eos_backward(residuals, g):
    log_y, targets = residuals
    scale = g / log_y.shape[0]
    return scale * (jnp.exp(log_y) - targets), -scale * log_y


entropic_openset_loss.defvjp(_eos_forward, _eos_backward)


def objectosphere_penalty(features: jax.Array, known: jax.Array, xi: float) -> jax.Array:
    """``mean_n`` of ``max(0, xi - |F|)^2`` for knowns and ``|F|^2`` for the others.

    ``known`` is a boolean (N,) mask; samples that are neither (padding) are masked by the caller.
    """
    magnitude = jnp.linalg.norm(features, axis=-1)
    return jnp.mean(jnp.where(known, jnp.square(jnp.maximum(0.0, xi - magnitude)), jnp.square(magnitude)))


def confidence(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-sample confidence: ``y_t`` for knowns, ``1 - max_o y_o + 1/O`` for unknowns.

    A sample is known when its target vector is not uniform (see ``data.targets``).
    """
    y = jax.nn.softmax(logits, axis=-1)
    known = targets.max(axis=-1) > targets.min(axis=-1)
    return jnp.where(known, jnp.sum(targets * y, axis=-1), 1.0 - y.max(axis=-1) + 1.0 / y.shape[-1])
