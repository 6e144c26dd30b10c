"""``maxlogit_probe``: maximum logit of a linear classifier fitted on the support features.

For models without a classifier of their own (ReSeND); ``maxlogit`` reads the network's own logits.
"""

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.linear import test_logits
from resend_jax.evaluate.scores import ScoreOutput, register


@register("maxlogit_probe", needs=("two_classes",))
def score(support: Features, test: Features, *, l2: float = 1e-3, steps: int = 200) -> ScoreOutput:
    logits = test_logits(support, test, l2, steps)
    return logits.max(1), logits.argmax(1)
