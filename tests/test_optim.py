"""LARS and the schedules against transcriptions of torchlars, torch.optim.SGD and torch's schedulers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from ml_collections import ConfigDict

from resend_jax.train.optim import (
    decay_and_adapt_mask,
    learning_rate_schedule,
    sgd_torch,
    torchlars_sgd,
    warmup_constant,
)

LR, WARMUP, STEPS, WD, TRUST, EPS = 0.5, 5, 10, 5e-4, 0.001, 1e-8


def problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": rng.standard_normal((7, 5)), "bias": np.zeros(5)},
        "norm": {"scale": rng.standard_normal(5) + 1.0},
    }
    grads = [jax.tree.map(lambda p: rng.standard_normal(p.shape), params) for _ in range(STEPS)]
    # One zero gradient exercises torchlars' "local lr = 1" branch.
    grads[3]["norm"]["scale"] = np.zeros(5)
    return params, grads


def reference_lr(step: int) -> float:
    """GradualWarmupScheduler(multiplier=1) stepped after every iteration."""
    return LR * min(step, WARMUP) / WARMUP


def run_optax(tx, params, grads):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_torch(params, grads, lars: bool, adapt=lambda path: True):
    """torchlars.LARS.step: precondition each grad, then torch SGD (weight_decay=0) steps."""
    flat = {path: torch.tensor(v, dtype=torch.float64) for path, v in _flatten(params)}
    tensors = [torch.nn.Parameter(t) for t in flat.values()]
    sgd = torch.optim.SGD(tensors, lr=reference_lr(0), momentum=0.9, weight_decay=0 if lars else WD)
    for step, g in enumerate(grads):
        for group in sgd.param_groups:
            group["lr"] = reference_lr(step)
        for (path, _), p, (_, grad) in zip(flat.items(), tensors, _flatten(g)):
            grad = torch.tensor(grad, dtype=torch.float64)
            if lars and adapt(path):
                w_norm, g_norm = p.detach().norm(), grad.norm()
                local_lr = TRUST * w_norm / (g_norm + WD * w_norm + EPS) if w_norm > 0 and g_norm > 0 else 1.0
                grad = (grad + WD * p.detach()) * local_lr
            p.grad = grad
        sgd.step()
    return {path: p.detach().numpy() for path, p in zip(flat, tensors)}


def _flatten(tree):
    return [
        (tuple(k.key for k in path), np.asarray(v)) for path, v in jax.tree_util.tree_leaves_with_path(tree)
    ]


def assert_same(jax_params, torch_params):
    for path, value in _flatten(jax_params):
        np.testing.assert_allclose(value, torch_params[path], rtol=1e-6, atol=1e-12, err_msg=str(path))


def test_warmup_schedule_matches_reference():
    schedule = warmup_constant(LR, WARMUP)
    np.testing.assert_allclose([schedule(s) for s in range(STEPS)], [reference_lr(s) for s in range(STEPS)])


def test_cosine_decay_matches_torch_schedulers():
    """Warmup as the reference, then torch's CosineAnnealingLR to 0 at ``total_steps``."""
    total = 23
    config = ConfigDict({"lr": LR, "warmup_steps": WARMUP, "total_steps": total, "lr_schedule": "cosine"})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step, WARMUP) / WARMUP),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - WARMUP, eta_min=0.0),
        ],
        milestones=[WARMUP],
    )
    expected = []
    for _ in range(total + 1):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    schedule = learning_rate_schedule(config)
    np.testing.assert_allclose([float(schedule(s)) for s in range(total + 1)], expected, rtol=1e-5, atol=1e-9)
    assert expected[WARMUP] == LR and expected[total] == 0.0
    constant = learning_rate_schedule(ConfigDict(dict(config, lr_schedule="constant")))
    np.testing.assert_allclose([constant(s) for s in range(STEPS)], [reference_lr(s) for s in range(STEPS)])
    with pytest.raises(ValueError, match="config.lr_schedule must be one of .*got 'linear'"):
        learning_rate_schedule(ConfigDict(dict(config, lr_schedule="linear")))


def test_torchlars_matches_reference_across_warmup():
    jax.config.update("jax_enable_x64", True)
    try:
        params, grads = problem()
        ours = run_optax(torchlars_sgd(warmup_constant(LR, WARMUP), 0.9, WD, TRUST, EPS), params, grads)
        assert_same(ours, run_torch(params, grads, lars=True))
        # optax.lars multiplies by the lr before the momentum: it differs during warmup.
        theirs = run_optax(
            optax.lars(warmup_constant(LR, WARMUP), WD, trust_coefficient=TRUST, eps=EPS, momentum=0.9),
            params,
            grads,
        )
        assert not np.allclose(theirs["dense"]["kernel"], ours["dense"]["kernel"], rtol=1e-3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_torchlars_exclusion_switch():
    jax.config.update("jax_enable_x64", True)
    try:
        params, grads = problem(1)
        ours = run_optax(
            torchlars_sgd(warmup_constant(LR, WARMUP), 0.9, WD, TRUST, EPS, decay_and_adapt_mask),
            params,
            grads,
        )
        assert_same(ours, run_torch(params, grads, lars=True, adapt=lambda path: path[-1] == "kernel"))
    finally:
        jax.config.update("jax_enable_x64", False)


def test_sgd_matches_torch_sgd():
    jax.config.update("jax_enable_x64", True)
    try:
        params, grads = problem(2)
        ours = run_optax(sgd_torch(warmup_constant(LR, WARMUP), 0.9, WD), params, grads)
        assert_same(ours, run_torch(params, grads, lars=False))
    finally:
        jax.config.update("jax_enable_x64", False)
