"""``csd``: MODE's cross-scale decision (REFERENCE.md section 4).

Each image gives six vectors from its layer4 map (``scale_vectors``, defined in
``evaluate.scales`` for every map size), L2-normalised; the bank holds all six of every support
image together. A test image scores
``max_s -(squared L2 distance from its scale-s vector to the k-th nearest bank vector)``.
"""

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.neighbours import kth_nearest_sq_distance, l2_normalise
from resend_jax.evaluate.scores import ScoreOutput, register


@register("csd", needs=("scales",))
def score(support: Features, test: Features, *, k: int = 10) -> ScoreOutput:
    bank = l2_normalise(support.scales).reshape(-1, support.scales.shape[-1])
    queries = l2_normalise(test.scales).reshape(-1, test.scales.shape[-1])
    sq = kth_nearest_sq_distance(queries, bank, k, desc="CSD search").reshape(test.scales.shape[:2])
    return (-sq).max(1), None
