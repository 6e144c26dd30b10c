"""A softmax classifier fitted on support features: the logits of the ``*_probe`` scores.

Multinomial logistic regression ``z = W f + b`` on the raw features: mean cross-entropy plus
``l2 / 2 * |W|^2``, from zeros, ``steps`` full-batch L-BFGS iterations (``optax.lbfgs`` with its
line search), jitted. Deterministic: no randomness anywhere. Fitted once per (support, test)
pair of feature sets and options, shared by ``msp_probe``, ``maxlogit_probe`` and
``energy_probe``; for models without a classifier of their own (ReSeND).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from resend_jax.evaluate.features import Features


@functools.partial(jax.jit, static_argnames="length")
def _lbfgs_steps(carry, features: jax.Array, labels: jax.Array, l2: float, length: int):
    """``length`` L-BFGS iterations from ``carry = (params, optimizer state)``."""

    def loss(params):
        logits = features @ params[0] + params[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + 0.5 * l2 * jnp.sum(params[0] ** 2)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, carry, length=length)[0]


def fit_softmax(
    features: jax.Array, labels: jax.Array, num_classes: int, l2: float, steps: int, block: int = 10
):
    """Returns ``(W (D, C), b (C,))`` minimising mean cross-entropy + ``l2 / 2 |W|^2``.

    The iterations run in jitted blocks of ``block`` so that a progress bar can follow them; it
    shows for 10,000 support features or more (seconds on a CPU).
    """
    params = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros((num_classes,)))
    # Strongly typed, as the blocks return it, so that the block compiles once.
    carry = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), (params, optax.lbfgs().init(params)))
    with tqdm(total=steps, desc="linear probe", unit="step", disable=len(features) < 10_000) as bar:
        for done in range(0, steps, block):
            length = min(block, steps - done)
            carry = jax.block_until_ready(_lbfgs_steps(carry, features, labels, l2, length))
            bar.update(length)
    return carry[0]


@functools.lru_cache(maxsize=1)
def test_logits(support: Features, test: Features, l2: float, steps: int) -> np.ndarray:
    """(N, C) logits of the test features under the classifier fitted on ``support``."""
    num_classes = int(support.labels.max()) + 1
    weights, bias = fit_softmax(
        jnp.asarray(support.features), jnp.asarray(support.labels), num_classes, l2, steps
    )
    return np.asarray(jnp.asarray(test.features) @ weights + bias, np.float64)
