"""``energy_probe``: ``T logsumexp(z / T)`` of a linear classifier fitted on the support features.

For models without a classifier of their own (ReSeND); ``energy`` reads the network's own logits.
"""

from scipy.special import logsumexp

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.linear import test_logits
from resend_jax.evaluate.scores import ScoreOutput, register


@register("energy_probe", needs=("two_classes",))
def score(
    support: Features, test: Features, *, temperature: float = 1.0, l2: float = 1e-3, steps: int = 200
) -> ScoreOutput:
    logits = test_logits(support, test, l2, steps)
    return temperature * logsumexp(logits / temperature, axis=1), logits.argmax(1)
