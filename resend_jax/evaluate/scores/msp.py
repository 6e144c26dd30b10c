"""``msp``: maximum softmax probability of the network's own classifier (OpenOOD, knn-ood)."""

from scipy.special import softmax

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scores import ScoreOutput, register


@register("msp", needs=("logits",))
def score(support: Features, test: Features) -> ScoreOutput:
    return softmax(test.logits, axis=1).max(1), test.logits.argmax(1)
