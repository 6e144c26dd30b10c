"""Open-set trainer: ``python -m resend_jax.train --config configs/openset_eos.py --workdir W``.

SGD with momentum over shuffled epochs of the train partition (knowns and negatives; knowns only
for ``config.loss = "softmax"``): ``config.num_epochs``, or more on a small training set, so
that at least ``config.min_steps`` steps run. After each epoch: loss and confidence of the
training and validation sets to ``W/metrics.jsonl``, and an orbax checkpoint (``model`` =
``{"params"}``, ``opt``, ``best``) in ``W/checkpoints/<epoch>``; rerunning resumes from the
latest. ``best`` holds the parameters of the epoch with the highest mean validation confidence
(REFERENCE.md section 5; the validation partition is the test split of knowns and negatives):
those are evaluated at the end, where ``evaluate.openset_report`` writes the plots and
``W/openset_metrics.json``, with the kept epoch and its validation confidence.
"""

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from ml_collections import ConfigDict

from resend_jax import checkpoint, runtime
from resend_jax.openset.data import NEGATIVE, OpenSetSplit, load_partition, targets, train_batches
from resend_jax.openset.evaluate import openset_report
from resend_jax.openset.losses import confidence, entropic_openset_loss, objectosphere_penalty
from resend_jax.openset.network import LeNet, preprocess
from resend_jax.train import common

LOSSES = ("eos", "softmax")


def epoch_sums(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Sums and counts from which the epoch's means are taken (see ``means``)."""
    num_classes = logits.shape[-1]
    t = targets(labels, num_classes)
    known, negative = labels >= 0, labels == NEGATIVE
    c = confidence(logits, t)
    return {
        "loss": entropic_openset_loss(logits, t) * labels.shape[0],
        "count": jnp.asarray(labels.shape[0], jnp.float32),
        "confidence_known": jnp.sum(jnp.where(known, c, 0.0)),
        "known": jnp.sum(known).astype(jnp.float32),
        "confidence_negative": jnp.sum(jnp.where(negative, c, 0.0)),
        "negative": jnp.sum(negative).astype(jnp.float32),
        "accuracy": jnp.sum(known & (logits.argmax(-1) == labels)).astype(jnp.float32),
    }


def means(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """``{prefix}/loss``, ``/confidence`` (all samples), ``/confidence_known``,
    ``/confidence_negative`` (if any), ``/accuracy``."""
    out = {f"{prefix}/loss": sums["loss"] / sums["count"]}
    out[f"{prefix}/confidence"] = (sums["confidence_known"] + sums["confidence_negative"]) / sums["count"]
    out[f"{prefix}/confidence_known"] = sums["confidence_known"] / sums["known"]
    if sums["negative"]:
        out[f"{prefix}/confidence_negative"] = sums["confidence_negative"] / sums["negative"]
    out[f"{prefix}/accuracy"] = sums["accuracy"] / sums["known"]
    return out


def train_step(params, opt_state, batch, model: LeNet, tx: optax.GradientTransformation, config: ConfigDict):
    """One SGD step on EOS (+ Objectosphere); returns new params, optimizer state and epoch sums."""

    def loss_fn(params):
        features, logits = model.apply({"params": params}, preprocess(batch["image"]))
        loss = entropic_openset_loss(logits, batch["target"])
        if config.objectosphere.weight:
            penalty = objectosphere_penalty(features, batch["label"] >= 0, config.objectosphere.xi)
            loss = loss + config.objectosphere.weight * penalty
        return loss, logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, epoch_sums(logits, batch["label"])


def predict(apply_fn, params, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of all ``images`` through jitted fixed-size batches (the last padded)."""
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.pad(chunk, [(0, batch_size - len(chunk))] + [(0, 0)] * (chunk.ndim - 1))
        f, z = jax.device_get(apply_fn(params, padded))
        features.append(f[: len(chunk)])
        logits.append(z[: len(chunk)])
    return np.concatenate(features), np.concatenate(logits)


def load_data(config: ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """The train, validation and test partitions (``config.data.limit`` samples each, if set)."""
    split = OpenSetSplit(tuple(config.data.known), tuple(config.data.negative), tuple(config.data.unknown))
    data = {}
    for purpose in ("train", "validation", "test"):
        partition = load_partition(config.data.path, purpose, split)
        if config.data.limit:
            partition = {k: v[: config.data.limit] for k, v in partition.items()}
        data[purpose] = partition
    if config.loss == "softmax":
        keep = data["train"]["label"] >= 0
        data["train"] = {k: v[keep] for k, v in data["train"].items()}
    return data


def training_epochs(config: ConfigDict, steps_per_epoch: int) -> int:
    """``config.num_epochs``, or the fewest whole epochs that run ``config.min_steps`` steps."""
    return max(config.num_epochs, -(-config.min_steps // steps_per_epoch))


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from ``workdir``), then evaluates the best-validation epoch; returns metrics."""
    if config.loss not in LOSSES:
        raise ValueError(f"config.loss must be one of {LOSSES}, got {config.loss!r}")
    if config.loss == "softmax" and config.objectosphere.weight:
        raise ValueError("the Objectosphere term needs negatives: use it with config.loss='eos'")
    workdir = Path(workdir)
    common.save_config(config, workdir)
    data = load_data(config)
    num_classes = len(config.data.known)
    model = LeNet(num_classes=num_classes, **config.model.to_dict())
    tx = optax.sgd(config.learning_rate, momentum=config.momentum)

    steps_per_epoch = len(data["train"]["label"]) // config.batch_size
    if not steps_per_epoch:
        raise ValueError(
            f"the train partition of {config.data.path} has {len(data['train']['label'])} samples, "
            f"fewer than config.batch_size={config.batch_size}"
        )
    epochs = training_epochs(config, steps_per_epoch)
    if epochs > config.num_epochs:
        logging.info(
            "training %d epochs instead of config.num_epochs=%d: %d steps per epoch, config.min_steps=%d",
            epochs,
            config.num_epochs,
            steps_per_epoch,
            config.min_steps,
        )

    def init():
        params = model.init(jax.random.key(config.seed), preprocess(data["train"]["image"][:1]))["params"]
        best = {
            "params": jax.tree.map(jnp.zeros_like, params),
            "epoch": jnp.zeros((), jnp.int32),
            "confidence": jnp.full((), -jnp.inf),
        }
        return {"params": params, "opt": tx.init(params), "best": best}

    manager = checkpoint.checkpoint_manager(workdir, max_to_keep=2)
    epoch = manager.latest_step() or 0
    if epoch:
        abstract = jax.eval_shape(init)
        restored = manager.restore(
            epoch,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore({"params": abstract["params"]}),
                opt=ocp.args.StandardRestore(abstract["opt"]),
                best=ocp.args.StandardRestore(abstract["best"]),
            ),
        )
        state = {"params": restored["model"]["params"], "opt": restored["opt"], "best": restored["best"]}
        logging.info("resumed from epoch %d in %s", epoch, workdir)
    else:
        state = runtime.jit(init)()

    step_fn = runtime.jit(partial(train_step, model=model, tx=tx, config=config), donate_argnums=(0, 1))
    apply_fn = runtime.jit(lambda params, images: model.apply({"params": params}, preprocess(images)))
    sums_fn = runtime.jit(epoch_sums)
    logger = common.MetricLogger(workdir, epochs * steps_per_epoch, epoch * steps_per_epoch)
    try:
        while epoch < epochs:
            epoch_metrics = []
            for batch in train_batches(data["train"], config.batch_size, num_classes, config.seed, epoch):
                state["params"], state["opt"], sums = step_fn(state["params"], state["opt"], batch)
                epoch_metrics.append(sums)
                logger.advance()
            epoch += 1
            train_sums = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(epoch_metrics))
            _, logits = predict(
                apply_fn, state["params"], data["validation"]["image"], config.eval.batch_size
            )
            val_sums = jax.tree.map(float, jax.device_get(sums_fn(logits, data["validation"]["label"])))
            metrics = {"epoch": epoch, **means(train_sums, "train"), **means(val_sums, "val")}
            if not state["best"]["epoch"] or metrics["val/confidence"] > state["best"]["confidence"]:
                # A host copy: the next step donates the device buffers of ``state["params"]``.
                state["best"] = {
                    "params": jax.device_get(state["params"]),
                    "epoch": np.asarray(epoch, np.int32),
                    "confidence": np.asarray(metrics["val/confidence"], np.float32),
                }
            if not np.isfinite(metrics["train/loss"]):
                raise FloatingPointError(
                    f"training loss is {metrics['train/loss']} in epoch {epoch}; the last good checkpoint "
                    f"is epoch {manager.latest_step()} in {workdir}: lower config.learning_rate and rerun"
                )
            logger.write(epoch * steps_per_epoch, metrics)
            manager.save(
                epoch,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave({"params": state["params"]}),
                    opt=ocp.args.StandardSave(state["opt"]),
                    best=ocp.args.StandardSave(state["best"]),
                ),
            )
        manager.wait_until_finished()
        kept = {
            "kept_epoch": int(state["best"]["epoch"]),
            "kept_val/confidence": float(state["best"]["confidence"]),
        }
        logging.info("evaluating epoch %d, the best validation confidence (%.4f)", *kept.values())

        outputs = {}
        for purpose, group in (("test", "known"), ("validation", "negative"), ("test", "unknown")):
            partition = data[purpose]
            keep = partition["label"] >= 0 if group == "known" else partition["label"] < 0
            features, logits = predict(
                apply_fn, state["best"]["params"], partition["image"][keep], config.eval.batch_size
            )
            outputs[group] = {"feature": features, "logits": logits, "label": partition["label"][keep]}
        results = openset_report(
            outputs,
            workdir,
            tau=config.eval.tau,
            fpr_levels=tuple(config.eval.fpr_levels),
            magnitude=bool(config.objectosphere.weight),
            training={"epochs": epochs, **kept},
        )
        results = {**kept, **results}
        logger.write(
            epoch * steps_per_epoch, {k if k in kept else f"test/{k}": v for k, v in results.items()}
        )
    finally:
        manager.close()
        logger.close()
    return results
