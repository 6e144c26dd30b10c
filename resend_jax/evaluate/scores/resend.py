"""``resend``: ReSeND's relational score against class prototypes (REFERENCE.md section 3).

Prototypes are the per-class means of the support features; for each test image the score is
``max_c softmax_c(-logit(test, prototype_c))`` and the prediction its argmax. Test features go
through the relational module in chunks of at most ``max_pairs`` (test, prototype) pairs, so
memory is bounded whatever the number of classes and test images; only the (N,) score and
prediction are kept. ``softmax=False`` scores ``max_c -logit`` instead (not the reference;
the quickstart uses it, see README).
"""

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.scores import ScoreOutput, register


@register("resend", needs=("model",))
def score(
    support: Features, test: Features, *, model, max_pairs: int = 32768, softmax: bool = True
) -> ScoreOutput:
    return model.normality(test.features, class_means(support), max_pairs=max_pairs, softmax=softmax)
