"""``maxlogit``: maximum logit of the network's own classifier (OpenOOD, knn-ood)."""

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scores import ScoreOutput, register


@register("maxlogit", needs=("logits",))
def score(support: Features, test: Features) -> ScoreOutput:
    return test.logits.max(1), test.logits.argmax(1)
