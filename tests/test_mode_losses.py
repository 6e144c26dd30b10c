"""MODE losses against direct transcriptions: ALPA per pair, SupCon as the official NumPy-able code."""

import jax
import jax.numpy as jnp
import numpy as np

from resend_jax.mode import alpa_loss, alpa_similarity, attention, supcon_loss


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cosine(x, y):
    return x @ y / (max(np.linalg.norm(x), 1e-8) * max(np.linalg.norm(y), 1e-8))


def alpa_loop(q, k, v, labels, scale=10.0):
    """REFERENCE.md section 4, one pair and one anchor at a time."""
    m, p, d = q.shape
    s = np.zeros((m, m))
    for a in range(m):
        for b in range(m):
            aligned_a = softmax(q[b] @ k[a].T / np.sqrt(d)) @ v[a]  # A: a at b's positions
            aligned_b = softmax(q[a] @ k[b].T / np.sqrt(d)) @ v[b]  # B: b at a's positions
            s[a, b] = np.mean(
                [cosine(v[a][i], aligned_b[i]) + cosine(v[b][i], aligned_a[i]) for i in range(p)]
            )
    logits = scale * s
    total = 0.0
    for i in range(m):
        log_norm = np.log(sum(np.exp(logits[i, j]) for j in range(m) if j != i))
        positives = [j for j in range(m) if j != i and labels[j] == labels[i]]
        total += sum(logits[i, j] - log_norm for j in positives) / max(len(positives), 1)
    return -total / m, s


def supcon_numpy(features, labels, temperature=0.1, base_temperature=0.07):
    """SupContrast's SupConLoss (contrast_mode 'all', guarded), features (bsz, n_views, dim)."""
    bsz, n_views = features.shape[:2]
    mask = (labels[:, None] == labels[None, :]).astype(np.float64)
    contrast = np.concatenate([features[:, i] for i in range(n_views)], axis=0)
    anchor_dot_contrast = contrast @ contrast.T / temperature
    logits = anchor_dot_contrast - anchor_dot_contrast.max(1, keepdims=True)
    mask = np.tile(mask, (n_views, n_views))
    logits_mask = 1 - np.eye(bsz * n_views)
    mask = mask * logits_mask
    exp_logits = np.exp(logits) * logits_mask
    log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = np.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


def normalised(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_alpa_equals_per_pair_loop():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(6, 4, 5)) for _ in range(3))
    labels = np.array([0, 1, 2, 0, 1, 2])
    expected, expected_s = alpa_loop(q, k, v, labels)
    s = np.asarray(alpa_similarity(*(jnp.asarray(x, jnp.float32) for x in (q, k, v))))
    np.testing.assert_allclose(s, expected_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, s.T, atol=1e-6)
    loss = float(alpa_loss(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(labels)))
    assert 0.5 < expected < 10
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_attention_rows_sum_to_one():
    rng = np.random.default_rng(1)
    weights = np.asarray(
        attention(jnp.asarray(rng.normal(size=(3, 16, 80))), jnp.asarray(rng.normal(size=(3, 16, 80))))
    )
    assert weights.shape == (3, 16, 16)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_supcon_equals_numpy_transcription():
    rng = np.random.default_rng(2)
    features = normalised(rng, (8, 2, 16))
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    expected = supcon_numpy(features, labels)
    embeddings = jnp.asarray(np.concatenate([features[:, 0], features[:, 1]]), jnp.float32)
    loss = float(supcon_loss(embeddings, jnp.asarray(np.tile(labels, 2))))
    assert 1 < expected < 20
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_supcon_finite_with_a_class_of_one_sample():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has one sample
    for views in (1, 2):  # one view: that anchor has no positive at all
        features = normalised(rng, (5, views, 16))
        embeddings = jnp.asarray(np.concatenate([features[:, i] for i in range(views)]), jnp.float32)
        tiled = jnp.asarray(np.tile(labels, views))
        loss, grad = jax.jit(jax.value_and_grad(supcon_loss))(embeddings, tiled)
        assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
        np.testing.assert_allclose(float(loss), supcon_numpy(features, labels), rtol=1e-5)
        alpa = jax.jit(alpa_loss)(
            *(jnp.asarray(rng.normal(size=(5 * views, 4, 8)), jnp.float32) for _ in range(3)), tiled
        )
        assert np.isfinite(float(alpa))
