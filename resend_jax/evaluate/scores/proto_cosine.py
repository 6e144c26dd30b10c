"""``proto_cosine``: ``max_c cos(f, mu_c)`` over the class prototypes."""

from resend_jax.evaluate.features import Features, class_means
from resend_jax.evaluate.neighbours import l2_normalise
from resend_jax.evaluate.scores import ScoreOutput, register


@register("proto_cosine")
def score(support: Features, test: Features) -> ScoreOutput:
    cosines = (
        l2_normalise(test.features.astype("float64")) @ l2_normalise(class_means(support).astype("float64")).T
    )
    return cosines.max(1), cosines.argmax(1)
