"""Relation inputs whitened by the known classes' statistics, and the distance residual."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scores import resend as resend_score
from resend_jax.inference import NoveltyModel
from resend_jax.models import ReSeND, build_resend
from resend_jax.models.whitening import whiten, within_class_whitening
from resend_jax.train.resend import batch_prototype_logits

SMALL = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def numpy_whitening(features, labels, shrinkage):
    """Transcription in float64: pooled within-class covariance, shrunk, inverse square root."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in classes])
    residuals = features - means[np.searchsorted(classes, labels)]
    covariance = residuals.T @ residuals / len(features)
    dim = covariance.shape[0]
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
    values, vectors = np.linalg.eigh(covariance)
    return means.mean(0), vectors @ np.diag(values**-0.5) @ vectors.T


def class_data(rng, n=300, dim=8):
    labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 5, (3, dim))
    mixing = rng.normal(0, 1, (dim, dim))
    return (centres[labels] + rng.normal(0, 1, (n, dim)) @ mixing).astype(np.float32), labels


def test_whitening_matches_a_numpy_transcription_and_whitens():
    rng = np.random.default_rng(0)
    features, labels = class_data(rng)
    onehot = jax.nn.one_hot(labels, 5)  # classes 3 and 4 absent: ignored
    for shrinkage in (0.5, 1.0):
        centre, matrix = numpy_whitening(features.astype(np.float64), labels, shrinkage)
        ours = within_class_whitening(features, onehot, shrinkage)
        np.testing.assert_allclose(ours.centre, centre, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.matrix, matrix, rtol=1e-3, atol=1e-5)
    # Barely shrunk, the within-class covariance of the whitened features is the identity.
    whitened = np.asarray(whiten(features, within_class_whitening(features, onehot, 1e-6)), np.float64)
    _, identity = numpy_whitening(whitened, labels, 1e-9)
    np.testing.assert_allclose(identity, np.eye(8), atol=2e-3)
    with pytest.raises(ValueError, match="whitening_shrinkage must be in"):
        within_class_whitening(features, onehot, 0.0)
    singletons = within_class_whitening(features[:3], jnp.eye(3), 0.5)  # no within-class spread
    np.testing.assert_array_equal(singletons.matrix, np.eye(8))


def test_distance_residual_starts_as_the_mean_squared_distance():
    """With a zero head the logit is ``scale * (mean((a - b)^2) - bias)`` at 1 and 1.5, in relate
    and relate_all."""
    model = build_resend({**SMALL, "head_zero_init": True, "distance_residual": True})
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.normal(size=(5, 512)), jnp.float32) for _ in range(2))
    params = model.init(jax.random.key(0), a, b, method=model.relate)
    expected = np.mean((np.asarray(a, np.float64) - np.asarray(b)) ** 2, 1) - 1.5
    np.testing.assert_allclose(model.apply(params, a, b, method=model.relate), expected, rtol=1e-5)
    table = model.apply(params, a, b[:3], method=model.relate_all)
    pairs = np.asarray(a, np.float64)[:, None] - np.asarray(b[:3])[None]
    np.testing.assert_allclose(table, np.mean(pairs**2, -1) - 1.5, rtol=1e-4)
    with pytest.raises(ValueError, match="model.whitening must be one of"):
        build_resend({**SMALL, "whitening": "zca"}).init(jax.random.key(0), a, b, method=ReSeND.relate)


def test_training_pairs_relate_features_whitened_by_the_batch():
    """batch_prototype_logits with whitening: each positive is the relation of the whitened
    feature and the whitened leave-one-out mean. At the first step the running covariance is
    the batch's (bias-corrected average of one), and it is kept with the batch-norm statistics."""
    model = build_resend({**SMALL, "whitening": "known_classes", "whitening_shrinkage": 0.3})
    labels = np.array([0, 0, 0, 2, 2, 3, 0, 2, 3, 3])
    images = jax.random.normal(jax.random.PRNGKey(0), (len(labels), 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), images[:1], images[:1])
    batch = {"images": images[:, None], "label": labels}
    logits, _, weights, updates = jax.jit(
        partial(batch_prototype_logits, model, num_classes=4, neg_per_pos=1)
    )(variables, batch, jax.random.PRNGKey(2))
    embed = jax.jit(partial(model.apply, train=True, method=ReSeND.embed, mutable=["batch_stats"]))
    features = np.asarray(embed(variables, images)[0], np.float64)
    centre, matrix = numpy_whitening(features, labels, 0.3)
    whitened = (features - centre) @ matrix
    relate = jax.jit(partial(model.apply, {"params": variables["params"]}, method=ReSeND.relate))
    for i, y in enumerate(labels):
        others = [j for j in range(len(labels)) if labels[j] == y and j != i]
        expected = relate(whitened[i][None], whitened[others].mean(0)[None])[0]
        np.testing.assert_allclose(logits[i, 0], expected, rtol=1e-3, atol=1e-3)
        assert weights[i, 0] == 1
    stats = updates["batch_stats"]
    means = np.stack([features[labels == c].mean(0) for c in np.unique(labels)])
    residuals = features - means[np.searchsorted(np.unique(labels), labels)]
    np.testing.assert_allclose(stats["whitening_weight"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(
        stats["whitening_covariance"], 0.1 * residuals.T @ residuals / len(labels), rtol=1e-3, atol=1e-6
    )
    assert np.all(variables["batch_stats"]["whitening_covariance"] == 0)


def test_a_whitened_model_scores_with_the_support_statistics():
    """NoveltyModel whitens what it relates with ``whitening_from(support)``; without it, it
    refuses. The resend score equals the same relation on features whitened beforehand."""
    config = {**SMALL, "head_zero_init": True, "distance_residual": True}
    whitened_module = build_resend({**config, "whitening": "known_classes"})
    plain_module = build_resend(config)
    images = jnp.zeros((1, 32, 32, 3))
    variables = jax.jit(plain_module.init)(jax.random.key(0, impl="rbg"), images, images)
    whitened_model = NoveltyModel(whitened_module, variables, image_size=32)
    plain_model = NoveltyModel(plain_module, variables, image_size=32)
    rng = np.random.default_rng(2)
    support = Features(rng.normal(size=(60, 512)).astype(np.float32), np.repeat(np.arange(3), 20))
    test = Features(rng.normal(size=(7, 512)).astype(np.float32), np.zeros(7, np.int64))
    with pytest.raises(ValueError, match="takes whitened features.*whitening_from"):
        whitened_model.normality(test.features, support.features[:3])
    with pytest.raises(ValueError, match="takes raw features"):
        plain_model.relate(
            test.features,
            test.features,
            whitening=whitened_model.whitening_from(support.features, support.labels),
        )
    statistics = whitened_model.whitening_from(support.features, support.labels)
    prewhitened = Features(np.asarray(whiten(support.features, statistics)), support.labels)
    test_white = Features(np.asarray(whiten(test.features, statistics)), test.labels)
    for options in ({"softmax": True}, {"softmax": False, "calibrate": True}):
        ours = resend_score.score(support, test, model=whitened_model, **options)
        expected = resend_score.score(prewhitened, test_white, model=plain_model, **options)
        np.testing.assert_allclose(ours[0], expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(ours[1], expected[1])


def test_whitening_needs_batch_prototypes():
    import sys
    from pathlib import Path

    from resend_jax.train.resend import check_options

    sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))
    import resend_fashion_mnist

    config = resend_fashion_mnist.get_config("smoke")
    assert config.model.whitening == "known_classes"
    check_options(config)
    config.data.partners = "images"
    with pytest.raises(ValueError, match="model.whitening needs the classes of a batch.*'images'"):
        check_options(config)
    config.model.whitening = "none"
    check_options(config)
