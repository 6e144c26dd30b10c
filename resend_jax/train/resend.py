"""ReSeND training: image pairs, MSE on ``2 * sigmoid(10 * logit) - 1``, LARS, data parallel.

The step is one ``jax.jit`` over a mesh with a ``data`` axis: the batch is sharded, the state
replicated and donated. Batch-norm statistics are means over the whole sharded batch, so they
cover the global batch as the reference's SyncBatchNorm does.
"""

from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from resend_jax import checkpoint
from resend_jax.data import open_source, pair_dataset, protocols
from resend_jax.inference import abstract_variables
from resend_jax.models import ReSeND, build_resend
from resend_jax.train import common
from resend_jax.train.optim import build_optimizer, warmup_constant

Pytree = Any

# The reference maps the logit into (-1, 1) with a translated sigmoid and regresses onto -1
# (same class) / +1 (different class): 2 * sigmoid(10 * logit) - 1 (= tanh(5 * logit)).
SIGMOID_COMPRESSION = 10.0
SIGMOID_EXPANSION = 2.0


def relation_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MSE between the squashed logits and -1/+1 targets (0 = same class, 1 = different)."""
    half = SIGMOID_EXPANSION / 2
    outputs = SIGMOID_EXPANSION * jax.nn.sigmoid(SIGMOID_COMPRESSION * logits) - half
    regression_targets = jnp.where(targets > 0.5, half, -half)
    return jnp.mean(jnp.square(outputs - regression_targets)), outputs


def pair_accuracy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean of the same-class and different-class accuracies, over those present (reference)."""
    predicted_different = outputs > 0
    different = targets > 0.5
    correct = predicted_different == different
    per_class = []
    for mask in (~different, different):
        count = mask.sum()
        per_class.append((jnp.where(mask, correct, False).sum() / jnp.maximum(count, 1), count > 0))
    accuracy = sum(jnp.where(present, acc, 0.0) for acc, present in per_class)
    return accuracy / sum(present.astype(jnp.float32) for _, present in per_class)


def train_step(state: Pytree, batch: dict, model: ReSeND, tx: optax.GradientTransformation, schedule):
    """One optimizer step on a global batch of pairs; returns the new state and metrics."""

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        logits, updates = model.apply(
            variables, batch["image_a"], batch["image_b"], train=True, mutable=["batch_stats"]
        )
        loss, outputs = relation_loss(logits, batch["target"])
        return loss, (updates["batch_stats"], outputs)

    (loss, (batch_stats, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "batch_stats": batch_stats,
        "opt": opt,
        "step": state["step"] + 1,
        "rng": state["rng"],
    }
    metrics = {
        "loss": loss,
        "pair_accuracy": pair_accuracy(outputs, batch["target"]),
        "lr": schedule(state["step"]),
        "grad_norm": optax.global_norm(grads),
    }
    return new_state, metrics


def initial_state(
    config: ConfigDict, model: ReSeND, tx: optax.GradientTransformation, variables: Pytree | None = None
) -> Pytree:
    """Fresh state from ``config.seed``, or around given ``variables`` (e.g. a converted backbone)."""
    rng = jax.random.PRNGKey(config.seed)
    if variables is None:
        images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
        variables = model.init(jax.random.fold_in(rng, 0), images, images)
    return {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt": tx.init(variables["params"]),
        "step": jnp.zeros([], jnp.int32),
        "rng": rng,
    }


def pretrained_variables(config: ConfigDict, model: ReSeND) -> Pytree | None:
    """The model of ``config.init_from`` (restored outside jit), or None to initialise."""
    if not config.init_from:
        return None
    return checkpoint.restore_model_variables(
        config.init_from, abstract_variables(model, config.data.image_size)
    )


def train_source(config: ConfigDict):
    """The training source restricted to ``config.data.known_classes`` (all when empty)."""
    source = open_source(config.data.train, data_dir=config.data.get("data_dir") or None)
    if config.data.known_classes:
        source = protocols.known_subset(source, protocols.parse_classes(config.data.known_classes))
    return source


def train_and_evaluate(config: ConfigDict, workdir: str) -> None:
    """Trains ReSeND for ``config.total_steps`` steps, resuming from ``workdir`` if it has checkpoints."""
    common.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    common.save_config(config, workdir)
    model = build_resend(config.model.to_dict())
    if jax.process_index() == 0:
        checkpoint.write_model_json(workdir, config.model.to_dict(), config.data.image_size, trainer="resend")

    schedule = warmup_constant(config.lr, config.warmup_steps)
    tx = build_optimizer(config)
    mesh = common.data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())

    source = train_source(config)
    data = pair_dataset(
        source,
        image_size=config.data.image_size,
        batch_size=common.per_host_batch_size(config.batch_size),
        neg_per_pos=config.data.neg_per_pos,
        class_balance=config.data.class_balance,
        seed=config.seed,
        augment=config.data.augment,
        num_workers=config.data.num_workers,
    )

    checkpointer = common.Checkpointer(workdir, keep=config.keep_checkpoints)
    state = common.init_or_restore(
        checkpointer,
        partial(initial_state, config, model, tx),
        partial(pretrained_variables, config, model),
        data,
        replicated,
    )
    step_fn = common.jit_train_step(partial(train_step, model=model, tx=tx, schedule=schedule), mesh)
    common.train_loop(config, workdir, state, step_fn, data, mesh, checkpointer, "pairs_per_second", "resend")
