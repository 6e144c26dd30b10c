"""MODE trainer: ``python -m resend_jax.train --config configs/mode_fashion_mnist.py --workdir W``.

``config.mode`` picks the loss (REFERENCE.md section 4):

- ``ce``: cross-entropy of the linear classifier on one augmented view (the start point of
  ``finetune`` and a baseline; the backbone stem is ``config.model.stem``);
- ``supcon``: SupCon on the head's embeddings of two views;
- ``joint``: SupCon + ``config.loss.alpa_weight`` * ALPA on the layer4 maps of two views;
- ``finetune``: ALPA only: the backbone from the cross-entropy model in ``config.init_from``,
  fresh q/k/v projectors (the reference's ``strict=False`` load into a new model).

Only the modules a mode's loss reaches (``TRAINED_MODULES``) are in its optimizer update; the
others keep their values, without weight decay. ``config.init_from`` restores the trained
modules but the projectors, which always start fresh. Images are converted on the device to
``config.data.normalization`` (MODE's scripts use CIFAR-10's statistics), augmented with
``config.data.augmentation`` (``data.AUGMENTATIONS``).

SGD with momentum and weight decay on ``learning_rate_schedule``; the step is one ``jax.jit`` over a mesh
with the batch sharded and the state replicated and donated, checkpoints resume (model, optimizer
and data iterator), SIGTERM saves and stops, a non-finite loss stops, as ``train/resend.py``.
At the end, ``evaluate.evaluate_model`` writes ``W/metrics.json`` and ``W/report.md``.
"""

from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from resend_jax import checkpoint
from resend_jax.data import Source, sample
from resend_jax.data.transforms import NORMALIZATIONS, renormalize
from resend_jax.data.views import view_dataset
from resend_jax.evaluate import scores
from resend_jax.mode.data import AUGMENTATIONS
from resend_jax.mode.evaluate import CLASSIFIER_MODES, evaluate_model, open_splits
from resend_jax.mode.losses import alpa_loss, supcon_loss
from resend_jax.mode.model import MODENet, build_model
from resend_jax.train import common
from resend_jax.train.optim import sgd_torch

Pytree = Any
MODES = ("ce", "supcon", "joint", "finetune")
PROJECTORS = ("query", "key", "value")
TRAINED_MODULES = {
    "ce": ("backbone", "classifier"),
    "supcon": ("backbone", "head"),
    "joint": ("backbone", "head", *PROJECTORS),
    "finetune": ("backbone", *PROJECTORS),
}
LR_SCHEDULES = ("cosine", "step")
COSINE_FLOOR = 1e-3  # SupContrast's eta_min = lr * decay_rate ** 3 with decay_rate 0.1


def views_of(mode: str) -> int:
    return 1 if mode == "ce" else 2


def losses(outputs: dict[str, jax.Array], labels: jax.Array, mode: str, loss_config: ConfigDict) -> dict:
    """The mode's loss terms and ``loss``, their weighted sum; outputs of all views, view-major."""
    terms = {}
    if mode == "ce":
        terms["ce"] = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels).mean()
    if mode in ("supcon", "joint"):
        terms["supcon"] = supcon_loss(
            outputs["embedding"], labels, loss_config.temperature, loss_config.base_temperature
        )
    if mode in ("joint", "finetune"):
        terms["alpa"] = alpa_loss(
            outputs["query"], outputs["key"], outputs["value"], labels, loss_config.alpa_scale
        )
    weights = {"ce": 1.0, "supcon": 1.0, "alpa": loss_config.alpa_weight if mode == "joint" else 1.0}
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}


def train_step(
    state: Pytree,
    batch: dict,
    model: MODENet,
    tx,
    schedule,
    mode: str,
    loss_config: ConfigDict,
    normalization: str = "imagenet",
):
    """One optimizer step on a global batch ``{"images": (B, V, S, S, 3), "label": (B,)}``.

    ``images`` are ImageNet-normalised (the pipeline's); the step converts them to ``normalization``.
    """
    images = jnp.swapaxes(batch["images"], 0, 1)  # view-major, as SupContrast's torch.cat
    views = images.shape[0]
    images = renormalize(images.reshape(-1, *images.shape[2:]), normalization)
    labels = jnp.tile(batch["label"], views)

    def loss_fn(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": state["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        terms = losses(outputs, labels, mode, loss_config)
        return terms["loss"], (updates["batch_stats"], terms, outputs["logits"])

    (_, (batch_stats, terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "batch_stats": batch_stats,
        "opt": opt,
        "step": state["step"] + 1,
        "rng": state["rng"],
    }
    metrics = {**terms, "lr": schedule(state["step"]), "grad_norm": optax.global_norm(grads)}
    if mode == "ce":
        metrics["accuracy"] = jnp.mean(logits.argmax(-1) == labels)
    return new_state, metrics


def learning_rate_schedule(config: ConfigDict) -> optax.Schedule:
    """SupContrast's schedules, in steps: ``cosine`` to ``lr * 1e-3`` over ``total_steps``, or
    ``step``, ``lr * lr_decay_rate ** #(boundaries in lr_decay_steps passed)``; then, for
    ``warmup_steps`` > 0, a linear ramp from ``warmup_from`` to the schedule's value at the end of
    the ramp (SupContrast's ``warmup_learning_rate``, which it switches on above batch 256)."""
    if config.lr_schedule == "cosine":
        base = optax.cosine_decay_schedule(config.lr, config.total_steps, alpha=COSINE_FLOOR)
    else:
        boundaries = jnp.asarray(config.lr_decay_steps, jnp.int32)

        def base(step):
            return config.lr * config.lr_decay_rate ** jnp.sum(step >= boundaries)

    if not config.warmup_steps:
        return base
    warmup_to = base(config.warmup_steps)

    def schedule(step):
        ramp = config.warmup_from + step / config.warmup_steps * (warmup_to - config.warmup_from)
        return jnp.where(step < config.warmup_steps, ramp, base(step))

    return schedule


def build_optimizer(config: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """torch SGD on the mode's ``TRAINED_MODULES``; the other modules' updates are zero."""
    trained = TRAINED_MODULES[config.mode]

    def labels(params):
        return {name: "trained" if name in trained else "frozen" for name in params}

    return optax.multi_transform(
        {
            "trained": sgd_torch(schedule, config.momentum, config.weight_decay),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )


def init_variables(config: ConfigDict, model: MODENet) -> Pytree:
    """Fresh ``{"params", "batch_stats"}`` from ``config.seed``."""
    size = config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return model.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), images)


def pretrained_variables(config: ConfigDict, model: MODENet) -> Pytree | None:
    """Fresh variables with the mode's trained modules but the projectors (``finetune``: the
    backbone) and the batch statistics from ``config.init_from``; None without ``init_from``."""
    if not config.init_from:
        return None
    fresh = jax.jit(partial(init_variables, config, model))()
    restored = checkpoint.restore_model_variables(config.init_from, jax.eval_shape(lambda: fresh))
    loaded = [name for name in TRAINED_MODULES[config.mode] if name not in PROJECTORS]
    params = {name: restored["params"][name] if name in loaded else p for name, p in fresh["params"].items()}
    return {"params": params, "batch_stats": restored["batch_stats"]}


def initial_state(
    config: ConfigDict, model: MODENet, tx: optax.GradientTransformation, variables: Pytree | None = None
) -> Pytree:
    """The train state from ``variables``, or from a fresh initialisation when None."""
    if variables is None:
        variables = init_variables(config, model)
    return {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt": tx.init(variables["params"]),
        "step": jnp.zeros([], jnp.int32),
        "rng": jax.random.PRNGKey(config.seed),
    }


def train_data(config: ConfigDict, train: Source):
    """This process's endless batches of the mode's views of (a seeded sample of) ``train``."""
    return view_dataset(
        sample(train, config.data.train_size, config.seed),
        image_size=config.data.image_size,
        batch_size=common.per_host_batch_size(config.batch_size),
        views=views_of(config.mode),
        seed=config.seed,
        transform=AUGMENTATIONS[config.data.augmentation],
        num_workers=config.data.num_workers,
    )


def check_config(config: ConfigDict) -> None:
    if config.mode not in MODES:
        raise ValueError(f"config.mode must be one of {MODES}, got {config.mode!r}")
    if config.mode == "finetune" and not config.init_from:
        raise ValueError("config.mode='finetune' needs --config.init_from=<a workdir trained with mode=ce>")
    choices = {
        "data.normalization": (config.data.normalization, tuple(NORMALIZATIONS)),
        "data.augmentation": (config.data.augmentation, tuple(AUGMENTATIONS)),
        "lr_schedule": (config.lr_schedule, LR_SCHEDULES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"config.{key} must be one of {allowed}, got {value!r}")
    registry = scores.registry()
    named = [m.strip() for m in config.eval.methods.split(",") if m.strip()]
    need_logits = [m for m in named if m in registry and "logits" in registry[m].needs]
    if need_logits and config.mode not in CLASSIFIER_MODES:
        raise ValueError(
            f"config.eval.methods {need_logits} score the network's own classifier, which mode "
            f"{config.mode!r} does not train; use {[m + '_probe' for m in need_logits]} instead"
        )


def train_and_evaluate(config: ConfigDict, workdir: str) -> None:
    """Trains for ``config.total_steps`` steps (resuming from ``workdir``), then evaluates."""
    check_config(config)
    common.maybe_initialize_distributed(config)
    workdir = Path(workdir)
    splits = open_splits(config)
    model = build_model(config.model.to_dict(), len(splits.train.class_names))

    schedule = learning_rate_schedule(config)
    tx = build_optimizer(config, schedule)
    data = train_data(config, splits.train)

    state, finished = common.train_loop(
        config,
        workdir,
        init=partial(initial_state, config, model, tx),
        pretrained=partial(pretrained_variables, config, model),
        step_fn=partial(
            train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            mode=config.mode,
            loss_config=config.loss,
            normalization=config.data.normalization,
        ),
        data_iterator=data,
        mesh=common.data_mesh(),
        rate_name="images_per_second",
        desc=f"mode:{config.mode}",
    )
    if not finished:
        return
    evaluate_model(
        config, model, {"params": state["params"], "batch_stats": state["batch_stats"]}, splits, workdir
    )
