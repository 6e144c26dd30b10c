"""Optimizers and schedules of the reference recipes, as optax transformations.

``torchlars_sgd`` reproduces torchlars' LARS wrapped around ``torch.optim.SGD`` step for step.
``optax.lars`` differs: it multiplies by the learning rate before the momentum, so the two part
ways whenever the learning rate changes (every warmup step).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


class TorchLarsState(NamedTuple):
    count: jax.Array
    momentum: Any


def warmup_constant(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """``lr * min(step, warmup) / warmup``: 0 at step 0, as the reference GradualWarmupScheduler."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return lambda step: learning_rate * jnp.minimum(step, warmup_steps) / warmup_steps


def warmup_cosine(learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """``warmup_constant`` up to ``warmup_steps``, then a cosine from ``lr`` to 0 at ``total_steps``."""
    warmup = warmup_constant(learning_rate, warmup_steps)
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        return jnp.where(
            step < warmup_steps, warmup(step), learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        )

    return schedule


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: Any) -> optax.Schedule:
    """``config.lr_schedule``: ``"constant"`` (the reference: linear warmup, then ``config.lr`` to the end)
    or ``"cosine"`` (the same warmup, then a cosine to 0 at ``config.total_steps``)."""
    if config.lr_schedule == "constant":
        return warmup_constant(config.lr, config.warmup_steps)
    if config.lr_schedule == "cosine":
        return warmup_cosine(config.lr, config.warmup_steps, config.total_steps)
    raise ValueError(f"config.lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")


def decay_and_adapt_mask(params: Any) -> Any:
    """True for kernels (and the cls token); False for biases and normalisation parameters."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] not in ("bias", "scale") for path in flat}
    return traverse_util.unflatten_dict(mask)


def _momentum_sgd(
    learning_rate: optax.ScalarOrSchedule, momentum: float, precondition
) -> optax.GradientTransformation:
    """PyTorch momentum SGD on ``precondition(grads, params)``: ``buf = m * buf + g'``; ``w -= lr * buf``."""
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)

    def init(params):
        return TorchLarsState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        if params is None:
            raise ValueError("this optimizer needs the params (weight decay, trust ratios)")
        new_grads = precondition(grads, params)
        buffers = jax.tree.map(lambda b, g: momentum * b + g, state.momentum, new_grads)
        lr = schedule(state.count)
        return jax.tree.map(lambda b: -lr * b, buffers), TorchLarsState(state.count + 1, buffers)

    return optax.GradientTransformation(init, update)


def torchlars_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    trust_coefficient: float = 0.001,
    eps: float = 1e-8,
    mask: Any = None,
) -> optax.GradientTransformation:
    """torchlars.LARS(SGD(momentum, weight_decay)) as one optax transformation.

    Per tensor: ``local_lr = trust * |w| / (|g| + wd * |w| + eps)`` (1 when |w| or |g| is 0);
    ``g' = (g + wd * w) * local_lr``; ``buf = momentum * buf + g'``; ``w -= lr * buf``.
    ``mask`` (a pytree of bools or a function of the params) selects the tensors that get weight
    decay and adaptation; the others get plain momentum SGD. ``None`` = every tensor, as the
    reference.
    """

    def lars(g, w, selected):
        if not selected:
            return g
        w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
        local_lr = jnp.where(
            (w_norm > 0) & (g_norm > 0),
            trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps),
            1.0,
        )
        return (g + weight_decay * w) * local_lr

    def precondition(grads, params):
        selected = mask(params) if callable(mask) else mask
        if selected is None:
            selected = jax.tree.map(lambda _: True, params)
        return jax.tree.map(lars, grads, params, selected)

    return _momentum_sgd(learning_rate, momentum, precondition)


def sgd_torch(
    learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 5e-4
) -> optax.GradientTransformation:
    """``torch.optim.SGD(momentum, weight_decay)``: ``g + wd * w``, then momentum, then lr.

    What the reference uses on a single GPU (it wraps SGD in LARS only when distributed).
    """

    def precondition(grads, params):
        return jax.tree.map(lambda g, w: g + weight_decay * w, grads, params)

    return _momentum_sgd(learning_rate, momentum, precondition)


def build_optimizer(config: Any) -> optax.GradientTransformation:
    """The optimizer named by ``config.optimizer`` on ``learning_rate_schedule(config)``.

    ``lars`` is the reference's (torchlars around SGD); ``sgd`` what the reference runs on one
    GPU; ``adamw`` a deviation for training from scratch on a small budget, where LARS' raw
    first step on zero-initialised biases and the 10x-compressed sigmoid saturate the head.
    """
    schedule = learning_rate_schedule(config)
    if config.optimizer == "lars":
        mask = decay_and_adapt_mask if config.lars_exclude_bias_and_norm else None
        return torchlars_sgd(
            schedule, config.momentum, config.weight_decay, config.lars_trust, config.lars_eps, mask
        )
    if config.optimizer == "sgd":
        return sgd_torch(schedule, config.momentum, config.weight_decay)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_and_adapt_mask)
    raise ValueError(f"config.optimizer must be 'lars', 'sgd' or 'adamw', got {config.optimizer!r}")
