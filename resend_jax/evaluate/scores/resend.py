"""``resend``: ReSeND's relational score against class prototypes (REFERENCE.md section 3).

Prototypes are the per-class means of the support features; for each test image the score is
``max_c softmax_c(-logit(test, prototype_c))`` and the prediction its argmax. Test features go
through the relational module in chunks of at most ``max_pairs`` (test, prototype) pairs, so
memory is bounded whatever the number of classes and test images; only the (N,) score and
prediction are kept.

Two deviations from the reference, off by default (the quickstart uses both, see README):
``softmax=False`` scores ``max_c -logit`` (the closest prototype alone); ``calibrate=True``
first subtracts from each class's similarity its mean over that class's support images
(``-logit(support image, own prototype)``), because a relational module trained on few classes
reaches a different "same" level for each, and an unknown image near a class with a high level
would otherwise outrank the known images of a class with a low one.
"""

import numpy as np

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.scores import ScoreOutput, register


def support_offsets(model, support: Features, prototypes: np.ndarray) -> np.ndarray:
    """(C,) mean ``-logit(support image, its class prototype)`` of each class."""
    similarities = -model.relate(support.features, prototypes[support.labels])
    return (np.bincount(support.labels, similarities) / np.bincount(support.labels)).astype(np.float32)


@register("resend", needs=("model",))
def score(
    support: Features,
    test: Features,
    *,
    model,
    max_pairs: int = 32768,
    softmax: bool = True,
    calibrate: bool = False,
) -> ScoreOutput:
    prototypes = class_means(support)
    offsets = support_offsets(model, support, prototypes) if calibrate else None
    return model.normality(test.features, prototypes, max_pairs=max_pairs, softmax=softmax, offsets=offsets)
