"""``energy``: ``T logsumexp(z / T)`` of the network's own classifier logits (OpenOOD, knn-ood)."""

from scipy.special import logsumexp

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scores import ScoreOutput, register


@register("energy", needs=("logits",))
def score(support: Features, test: Features, *, temperature: float = 1.0) -> ScoreOutput:
    return temperature * logsumexp(test.logits / temperature, axis=1), test.logits.argmax(1)
