"""MODE's training losses (REFERENCE.md section 4): supervised contrastive and ALPA.

Both take ``M`` embeddings of the views of a batch (view-major: all first views, then all second
views) with their labels, and share the supervised-contrastive form over an (M, M) logit matrix:
``-mean_i sum_{j in P(i)} [l_ij - log sum_{k != i} exp(l_ik)] / |P(i)|``, positives ``P(i)`` =
the other views with i's label. An anchor with no positive adds 0 to the mean (the official
SupContrast guard: its positive count is clamped to 1), instead of 0 / 0 = NaN.
"""

import jax
import jax.numpy as jnp

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's, on each norm


def contrastive_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The supervised-contrastive form above on (M, M) ``logits`` and (M,) ``labels``."""
    m = logits.shape[0]
    not_self = ~jnp.eye(m, dtype=bool)
    positive = (labels[:, None] == labels[None, :]) & not_self
    logits = logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True))
    log_norm = jax.nn.logsumexp(jnp.where(not_self, logits, -jnp.inf), axis=1, keepdims=True)
    log_prob = logits - log_norm
    count = positive.sum(axis=1)
    mean_positive = jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(count, 1)
    return -jnp.mean(mean_positive)


def supcon_loss(
    embeddings: jax.Array, labels: jax.Array, temperature: float = 0.1, base_temperature: float = 0.07
) -> jax.Array:
    """SupCon (Khosla et al.) on (M, D) L2-normalised embeddings, every view an anchor."""
    logits = embeddings @ embeddings.T / temperature
    return (temperature / base_temperature) * contrastive_loss(logits, labels)


def attention(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """(..., P, d) x (..., P, d) -> (..., P, P) ``softmax(Q K^T / sqrt(d))`` over the keys."""
    scale = queries.shape[-1] ** -0.5
    return jax.nn.softmax(jnp.einsum("...pd,...qd->...pq", queries, keys) * scale, axis=-1)


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), COSINE_EPS)


def alpa_similarity(queries: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
    """(M, P, d) per-position projections -> (M, M) ``S(a, b)``, symmetric.

    ``C[i, j] = mean_p cos(V_j[p], (softmax(Q_j K_i^T / sqrt d) V_i)[p])``: image i's values
    aligned to image j's positions, compared with j's own; ``S(a, b) = C[a, b] + C[b, a]``.
    """
    weights = attention(queries[None, :], keys[:, None])  # [i, j] = softmax(Q_j K_i^T)
    aligned = jnp.einsum("ijpq,iqd->ijpd", weights, values)
    cosines = jnp.einsum("ijpd,jpd->ijp", _normalise(aligned), _normalise(values))
    c = cosines.mean(axis=-1)
    return c + c.T


def alpa_loss(
    queries: jax.Array, keys: jax.Array, values: jax.Array, labels: jax.Array, scale: float = 10.0
) -> jax.Array:
    """ALPA: the supervised-contrastive form on ``scale * S`` (``alpa_similarity``)."""
    return contrastive_loss(scale * alpa_similarity(queries, keys, values), labels)
