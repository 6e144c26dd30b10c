"""ReSeND training: image pairs, MSE on ``2 * sigmoid(10 * logit) - 1``, LARS, data parallel.

``config.data.partners`` picks what each image is paired with: another image (``images``, the
reference) or class prototypes of its batch (``batch_prototypes``, optionally with rotated
copies as extra classes; see ``batch_prototype_logits``).

The step is one ``jax.jit`` over a mesh with a ``data`` axis: the batch is sharded, the state
replicated and donated. Batch-norm statistics are means over the whole sharded batch, so they
cover the global batch as the reference's SyncBatchNorm does.

``config.data.augment_on`` says where the training augmentation runs: ``host`` (the reference's
PIL pipeline in grain workers) or ``device``: the workers only decode and crop to uint8, and the
step flips, jitters, grays and normalises (``data.device_augment``, pixel for pixel as the
host), each image with a key from the step's and its index in the global batch.
"""

from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from resend_jax import checkpoint
from resend_jax.data import (
    device_augment,
    eval_transform,
    open_source,
    pair_dataset,
    protocols,
    train_transform,
)
from resend_jax.data.pipeline import AUGMENT_ON
from resend_jax.data.transforms import crop_transform
from resend_jax.data.views import view_dataset
from resend_jax.inference import abstract_variables
from resend_jax.models import ReSeND, build_resend
from resend_jax.models.whitening import whiten
from resend_jax.train import common
from resend_jax.train.optim import build_optimizer, learning_rate_schedule

Pytree = Any

# The reference maps the logit into (-1, 1) with a translated sigmoid and regresses onto -1
# (same class) / +1 (different class): 2 * sigmoid(10 * logit) - 1 (= tanh(5 * logit)).
SIGMOID_COMPRESSION = 10.0
SIGMOID_EXPANSION = 2.0


LOSS_WEIGHTINGS = ("pairs", "balanced")  # config.loss_weighting


def relation_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, weighting: str = "pairs"
) -> tuple[jax.Array, jax.Array]:
    """MSE between the squashed logits and -1/+1 targets (0 = same class, 1 = different).

    ``weights`` (0/1, the shape of ``logits``) says which pairs exist. ``weighting="pairs"``
    (the reference) averages over those pairs; ``"balanced"`` averages the same-class and the
    different-class pairs' means, so that with many negatives per positive the constant answer
    "different" is no longer a minimum the relation must climb out of.
    """
    half = SIGMOID_EXPANSION / 2
    outputs = SIGMOID_EXPANSION * jax.nn.sigmoid(SIGMOID_COMPRESSION * logits) - half
    regression_targets = jnp.where(targets > 0.5, half, -half)
    squared = jnp.square(outputs - regression_targets)
    if weighting == "pairs":
        return jnp.sum(squared * weights) / jnp.maximum(jnp.sum(weights), 1.0), outputs
    if weighting != "balanced":
        raise ValueError(f"config.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    means = []
    for side in (targets <= 0.5, targets > 0.5):
        side_weights = weights * side
        means.append(jnp.sum(squared * side_weights) / jnp.maximum(jnp.sum(side_weights), 1.0))
    return (means[0] + means[1]) / 2, outputs


def pair_accuracy(outputs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of the same-class and different-class accuracies, over those present (reference)."""
    valid = weights > 0
    predicted_different = outputs > 0
    different = targets > 0.5
    correct = predicted_different == different
    per_class = []
    for mask in (~different & valid, different & valid):
        count = mask.sum()
        per_class.append((jnp.where(mask, correct, False).sum() / jnp.maximum(count, 1), count > 0))
    accuracy = sum(jnp.where(present, acc, 0.0) for acc, present in per_class)
    return accuracy / sum(present.astype(jnp.float32) for _, present in per_class)


def image_pair_logits(model: ReSeND, variables: Pytree, batch: dict, rng: jax.Array):
    """The reference: both images of every pair through the backbone, one logit per pair.

    Returns ``(logits, targets, weights (all 1), batch-norm updates)``.
    """
    logits, updates = model.apply(
        variables, batch["image_a"], batch["image_b"], train=True, mutable=["batch_stats"]
    )
    return logits, batch["target"], jnp.ones_like(logits), updates


def rotations_as_classes(
    images: jax.Array, labels: jax.Array, num_classes: int, rng: jax.Array
) -> tuple[jax.Array, jax.Array, int]:
    """Rotates each (square) image by k * 90 degrees, k uniform in 0..3, as class ``label + k * C``.

    Rotated images are "shifted" classes (CSI, Tack et al. 2020): negatives that share the
    known classes' texture and parts, so the relation must look at shape to call a pair the same.
    """
    k = jax.random.randint(rng, labels.shape, 0, 4)
    rotated = [jnp.rot90(images, r, axes=(1, 2)) for r in range(4)]
    select = k[:, None, None, None]
    images = sum(jnp.where(select == r, rotated[r], 0.0) for r in range(4))
    return images, labels + k * num_classes, 4 * num_classes


def batch_prototype_logits(
    model: ReSeND,
    variables: Pytree,
    batch: dict,
    rng: jax.Array,
    *,
    num_classes: int,
    neg_per_pos: int,
    rotations: bool = False,
):
    """Each image against class prototypes built from the same batch, as at test time.

    The backbone embeds the batch once. Prototypes are per-class means of the batch features;
    an image's own class uses the mean of the *other* images of its class (leave-one-out; no
    positive when it is alone), and ``neg_per_pos`` other classes present in the batch are drawn
    at random per image (all of them when fewer). ``rotations`` adds rotated classes
    (``rotations_as_classes``). With ``model.whitening`` the features are whitened first
    (``ReSeND.training_whitening``: the batch's centre, the running within-class covariance).
    Returns logits (B, 1 + k), targets (0 for the first column, 1 after), 0/1 weights for the
    pairs that exist, and the batch-norm updates.
    """
    images, labels = batch["images"][:, 0], batch["label"]
    rotate_rng, rng = jax.random.split(rng)
    if rotations:
        images, labels, num_classes = rotations_as_classes(images, labels, num_classes, rotate_rng)
    features, updates = model.apply(
        variables, images, train=True, mutable=["batch_stats"], method=ReSeND.embed
    )
    params = {"params": variables["params"]}
    onehot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)  # (B, C)
    if model.whitening == "known_classes":  # the batch's classes are the known ones
        variables = {**params, "batch_stats": updates["batch_stats"]}
        statistics, updates = model.apply(
            variables, features, onehot, mutable=["batch_stats"], method=ReSeND.training_whitening
        )
        features = whiten(features, statistics)
    sums, counts = onehot.T @ features, onehot.sum(0)
    prototypes = sums / jnp.maximum(counts, 1.0)[:, None]
    others = counts[labels] - 1.0
    leave_one_out = (sums[labels] - features) / jnp.maximum(others, 1.0)[:, None]
    positive_logits = model.apply(params, features, leave_one_out, method=ReSeND.relate)

    k = max(1, min(neg_per_pos, num_classes - 1))
    candidates = (onehot == 0) & (counts > 0)[None]
    _, chosen = jax.lax.top_k(jnp.where(candidates, jax.random.uniform(rng, onehot.shape), -1.0), k)
    anchors = jnp.repeat(features, k, axis=0)
    negative_logits = model.apply(
        params, anchors, prototypes[chosen].reshape(-1, features.shape[-1]), method=ReSeND.relate
    ).reshape(-1, k)

    logits = jnp.concatenate([positive_logits[:, None], negative_logits], axis=1)
    targets = jnp.concatenate([jnp.zeros_like(positive_logits)[:, None], jnp.ones_like(negative_logits)], 1)
    weights = jnp.concatenate(
        [(others > 0)[:, None], jnp.take_along_axis(candidates, chosen, axis=1)], axis=1
    ).astype(jnp.float32)
    return logits, targets, weights, updates


PARTNERS = ("images", "batch_prototypes")  # config.data.partners
IMAGE_KEYS = ("image_a", "image_b", "images")  # the image entries of either kind of batch


def augment_batch(batch: dict, rng: jax.Array) -> dict:
    """The device half of the training augmentation (``device_augment.augment``) on a batch of
    uint8 crops: each image entry (``IMAGE_KEYS``) with its own key, each image with the key of
    its index in the global batch, so that the result does not depend on the device count."""
    augmented = {}
    for index, key in enumerate(IMAGE_KEYS):
        if key in batch:
            images = batch[key]
            flat = images.reshape(-1, *images.shape[-3:])  # (B, V, S, S, 3) -> (B * V, S, S, 3)
            flat = device_augment.augment(jax.random.fold_in(rng, index), flat)
            augmented[key] = flat.reshape(images.shape)
    return batch | augmented


def train_step(
    state: Pytree,
    batch: dict,
    model: ReSeND,
    tx: optax.GradientTransformation,
    schedule,
    pair_logits,
    loss_weighting: str = "pairs",
    augment_on: str = "host",
):
    """One optimizer step on a global batch; ``pair_logits`` is ``image_pair_logits`` or a bound
    ``batch_prototype_logits`` (``training_data`` picks it); ``loss_weighting`` as ``relation_loss``;
    ``augment_on="device"``: the batch holds uint8 crops, augmented here (``augment_batch``)."""
    rng = jax.random.fold_in(state["rng"], state["step"])
    if augment_on == "device":
        augment_rng, rng = jax.random.split(rng)
        batch = augment_batch(batch, augment_rng)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        logits, targets, weights, updates = pair_logits(model, variables, batch, rng)
        loss, outputs = relation_loss(logits, targets, weights, loss_weighting)
        return loss, (updates["batch_stats"], outputs, targets, weights)

    (loss, (batch_stats, outputs, targets, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"]
    )
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
        "pair_accuracy": pair_accuracy(outputs, targets, weights),
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
    """The model of ``config.init_from`` (restored outside jit), or None for ``"none"``."""
    if config.init_from == "none":
        return None
    return checkpoint.restore_model_variables(
        config.init_from, abstract_variables(model, config.data.image_size)
    )


def check_init_from(config: ConfigDict) -> None:
    """The reference always starts the backbone from ImageNet weights: training from scratch
    must be asked for (``init_from = "none"``), an empty ``init_from`` is an error."""
    if not config.init_from:
        raise ValueError(
            "config.init_from is empty: the reference starts ReSeND's backbone from ImageNet weights. "
            "Convert torchvision's file with `python -m resend_jax.convert_torch --torchvision_resnet18 "
            "resnet18-f37072fd.pth --out models/in1k`, then pass --config.init_from=models/in1k; "
            "--config.init_from=none trains from scratch"
        )


def train_source(config: ConfigDict):
    """The training source restricted to ``config.data.known_classes`` (all when empty).

    With ``data.augment_on = "device"``, image files and TFDS records stay encoded until the
    host worker has drawn the crop (``transforms.crop_transform`` decodes JPEGs at reduced size).
    """
    source = open_source(
        config.data.train,
        data_dir=config.data.get("data_dir") or None,
        load_truncated=config.data.get("load_truncated_images", False),
        decode=not device_augmentation(config) or config.data.train.startswith("idx:"),
    )
    if config.data.known_classes:
        source = protocols.known_subset(source, protocols.parse_classes(config.data.known_classes))
    return source


def device_augmentation(config: ConfigDict) -> bool:
    """Whether the train step augments (``data.augment`` with ``data.augment_on = "device"``):
    the data iterator then yields uint8 crops."""
    return bool(config.data.augment) and config.data.augment_on == "device"


def training_data(config: ConfigDict, source) -> Any:
    """The data iterator of ``config.data.partners`` (``pair_function`` builds its pairs).

    ``images`` (reference): a batch is ``config.batch_size`` pairs of augmented images from
    ``pair_dataset``. ``batch_prototypes``: a batch is ``config.batch_size`` augmented images,
    each paired in the step with batch class prototypes (``batch_prototype_logits``);
    ``data.class_balance`` applies to ``images`` only. With ``device_augmentation`` the images
    are uint8 crops (``crop_transform``), augmented in the step.
    """
    batch_size = common.per_host_batch_size(config.batch_size)
    if config.data.partners == "images":
        data = pair_dataset(
            source,
            image_size=config.data.image_size,
            batch_size=batch_size,
            neg_per_pos=config.data.neg_per_pos,
            class_balance=config.data.class_balance,
            seed=config.seed,
            augment=config.data.augment,
            augment_on=config.data.augment_on,
            num_workers=config.data.num_workers,
        )
    if config.data.partners == "batch_prototypes":
        transform = train_transform if config.data.augment else _eval_transform
        if device_augmentation(config):
            transform = crop_transform
        data = view_dataset(
            source,
            image_size=config.data.image_size,
            batch_size=batch_size,
            views=1,
            seed=config.seed,
            transform=transform,
            num_workers=config.data.num_workers,
        )
    return data


def check_options(config: ConfigDict) -> None:
    """The choices among fixed options, before any data is opened."""
    for key, value, allowed in [
        ("data.partners", config.data.partners, PARTNERS),
        ("loss_weighting", config.loss_weighting, LOSS_WEIGHTINGS),
        ("data.augment_on", config.data.augment_on, AUGMENT_ON),
    ]:
        if value not in allowed:
            raise ValueError(f"config.{key} must be one of {allowed}, got {value!r}")
    if config.model.whitening != "none" and config.data.partners != "batch_prototypes":
        raise ValueError(
            "config.model.whitening needs the classes of a batch (data.partners = 'batch_prototypes'), "
            f"got data.partners = {config.data.partners!r}"
        )


def pair_function(config: ConfigDict, num_classes: int):
    """``image_pair_logits`` or ``batch_prototype_logits`` bound to the config's options."""
    if config.data.partners == "images":
        return image_pair_logits
    if config.data.partners == "batch_prototypes":
        return partial(
            batch_prototype_logits,
            num_classes=num_classes,
            neg_per_pos=config.data.neg_per_pos,
            rotations=config.data.rotation_classes,
        )
    raise ValueError(f"config.data.partners must be one of {PARTNERS}, got {config.data.partners!r}")


def step_and_init(config: ConfigDict, num_classes: int):
    """``(step_fn, init, model)``: the train step (``train_step`` bound to the model, optimizer,
    schedule, pairs and loss of ``config``) and the state initialiser (``initial_state``)."""
    model = build_resend(config.model.to_dict())
    tx = build_optimizer(config)
    step_fn = partial(
        train_step,
        model=model,
        tx=tx,
        schedule=learning_rate_schedule(config),
        pair_logits=pair_function(config, num_classes),
        loss_weighting=config.loss_weighting,
        augment_on="device" if device_augmentation(config) else "host",
    )
    return step_fn, partial(initial_state, config, model, tx), model


def _eval_transform(image, size: int, rng):
    return eval_transform(image, size)


def train_and_evaluate(config: ConfigDict, workdir: str) -> None:
    """Trains ReSeND for ``config.total_steps`` steps, resuming from ``workdir`` if it has checkpoints."""
    check_init_from(config)
    check_options(config)
    common.maybe_initialize_distributed(config)
    source = train_source(config)
    data = training_data(config, source)
    step_fn, init, model = step_and_init(config, len(source.class_names))
    common.train_loop(
        config,
        Path(workdir),
        init=init,
        pretrained=partial(pretrained_variables, config, model),
        step_fn=step_fn,
        data_iterator=data,
        mesh=common.data_mesh(),
        rate_name="pairs_per_second" if config.data.partners == "images" else "images_per_second",
        desc="resend",
        model_json={
            "model_config": config.model.to_dict(),
            "image_size": config.data.image_size,
            "trainer": "resend",
        },
    )
