"""``resend``: ReSeND's relational score against class prototypes (REFERENCE.md section 3).

``prototypes="mean"`` (the reference's default evaluator): one prototype per class, the mean of
its support features; for each test image the score is ``max_c softmax_c(-logit(test, proto_c))``
and the prediction its argmax. Test features go through the relational module in chunks of at
most ``max_pairs`` (test, prototype) pairs, so memory is bounded whatever the number of classes.

``prototypes="coreset"`` (the reference's ``--most_significant_prototypes --NNK n``): per class,
``nnk`` support features chosen by greedy k-center (``coreset_indices``); a class's similarity is
the max over its prototypes of ``-logit``. ``softmax=True`` reports the reference's MSP form,
``softmax=False`` its MLS (max-logit) form.

Two deviations from the reference, off by default (the quickstart uses both, see docs/quickstart_recipe.md):
``softmax=False`` with mean prototypes scores ``max_c -logit`` (the closest prototype alone);
``calibrate=True`` first subtracts from each class's similarity its mean over that class's support
images (``-logit(support image, own prototype)``), because a relational module trained on few
classes reaches a different "same" level for each.

A model trained on whitened relation inputs (``model.whitening``) is given the support set's
within-class statistics (``NoveltyModel.whitening_from``).

With one known class the softmax is constant (every image scores 1): the score then falls back
to ``-logit`` with a warning.
"""

import logging

import numpy as np

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.scores import ScoreOutput, register

PROTOTYPES = ("mean", "coreset")


def support_offsets(model, support: Features, prototypes: np.ndarray, whitening=None) -> np.ndarray:
    """(C,) mean ``-logit(support image, its class prototype)`` of each class."""
    similarities = -model.relate(support.features, prototypes[support.labels], whitening=whitening)
    return (np.bincount(support.labels, similarities) / np.bincount(support.labels)).astype(np.float32)


def coreset_indices(features: np.ndarray, n: int) -> np.ndarray:
    """The reference's ``get_coreset_idx`` after its swap: start at the feature nearest the mean,
    then repeatedly add the feature farthest (L2) from those chosen; ``min(n, len)`` indices.

    The reference computes the distances in float16 on a GPU; here they are float32, so a near
    tie may pick another feature.
    """
    features = np.asarray(features, np.float32)
    first = int(np.argmin(np.linalg.norm(features - features.mean(0), axis=1)))
    chosen = [first]
    nearest = np.linalg.norm(features - features[first], axis=1)
    for _ in range(min(n, len(features)) - 1):
        nearest[chosen[-1]] = 0
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(features - features[chosen[-1]], axis=1))
    return np.asarray(chosen)


def coreset_prototypes(support: Features, nnk: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, D) prototypes and their (P,) classes: ``nnk`` per class by ``coreset_indices``."""
    prototypes, classes = [], []
    for c in range(int(support.labels.max()) + 1):
        features = support.features[support.labels == c]
        prototypes.append(features[coreset_indices(features, nnk)])
        classes.append(np.full(len(prototypes[-1]), c))
    return np.concatenate(prototypes), np.concatenate(classes)


def _softmax_max(similarities: np.ndarray) -> np.ndarray:
    shifted = np.exp(similarities - similarities.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)


@register("resend", needs=("model",))
def score(
    support: Features,
    test: Features,
    *,
    model,
    max_pairs: int = 32768,
    softmax: bool = True,
    calibrate: bool = False,
    prototypes: str = "mean",
    nnk: int = 1,
) -> ScoreOutput:
    if prototypes not in PROTOTYPES:
        raise ValueError(f"resend: prototypes must be one of {PROTOTYPES}, got {prototypes!r}")
    num_classes = int(support.labels.max()) + 1
    if softmax and num_classes == 1:
        logging.warning("resend: one known class, so the softmax is constant; scoring -logit instead")
        softmax = False
    whitening = model.whitening_from(support.features, support.labels)
    if prototypes == "mean":
        means = class_means(support)
        offsets = support_offsets(model, support, means, whitening) if calibrate else None
        return model.normality(
            test.features, means, max_pairs=max_pairs, softmax=softmax, offsets=offsets, whitening=whitening
        )
    if calibrate:
        raise ValueError("resend: calibrate applies to mean prototypes only")
    if nnk < 1:
        raise ValueError(f"resend: nnk must be >= 1, got {nnk}")
    references, classes = coreset_prototypes(support, nnk)
    similarities = model.similarities(test.features, references, max_pairs=max_pairs, whitening=whitening)
    per_class = np.full((len(test), num_classes), -np.inf, np.float32)
    for c in range(num_classes):
        per_class[:, c] = similarities[:, classes == c].max(axis=1)
    scores = _softmax_max(per_class) if softmax else per_class.max(axis=1)
    return scores.astype(np.float32), per_class.argmax(axis=1)
