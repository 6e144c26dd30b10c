"""``resend_knn``: the reference's ``--knn_distance_evaluator --NNK k`` (REFERENCE.md section 3).

Each test image is related to every support image; its score is the mean of the ``k`` largest
``-logit(test, support image)``. That is N x M relational passes, so the method runs only when
named (``--config.methods=resend_knn``). Support images are taken ``support_chunk`` at a time and
only the running top ``k`` is kept, so memory is bounded.
"""

import numpy as np
from tqdm import tqdm

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scores import ScoreOutput, register


@register("resend_knn", needs=("model",), default=False)
def score(
    support: Features,
    test: Features,
    *,
    model,
    k: int = 1,
    max_pairs: int = 32768,
    support_chunk: int = 4096,
) -> ScoreOutput:
    if not 1 <= k <= len(support):
        raise ValueError(f"resend_knn: k = {k} but the support set has {len(support)} images")
    whitening = model.whitening_from(support.features, support.labels)
    best = np.full((len(test), 0), -np.inf, np.float32)
    starts = range(0, len(support), support_chunk)
    for start in tqdm(starts, desc="resend_knn", unit="chunk", disable=len(starts) < 2):
        references = support.features[start : start + support_chunk]
        chunk = model.similarities(test.features, references, max_pairs, whitening=whitening)
        merged = np.concatenate([best, chunk], axis=1)
        best = -np.partition(-merged, min(k, merged.shape[1]) - 1, axis=1)[:, :k]
    return best.mean(axis=1), None
