"""Open-set pieces without data: targets, splitter, EOS and its gradient, confidence, train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from resend_jax.openset import (
    NEGATIVE,
    UNKNOWN,
    LeNet,
    OpenSetSplit,
    confidence,
    entropic_openset_loss,
    entropic_openset_loss_log_softmax,
    objectosphere_penalty,
    openset_labels,
    split_batch,
    targets,
)
from resend_jax.openset.network import preprocess
from resend_jax.openset.train import train_step

SPLIT = OpenSetSplit(known=(4, 5, 8, 9), negative=(0, 2, 3, 7), unknown=(1, 6))


def test_targets_one_hot_for_knowns_uniform_for_unknowns():
    _, labels = openset_labels(np.arange(10), SPLIT)
    t = np.asarray(targets(labels, 4))
    expected = {4: [1, 0, 0, 0], 5: [0, 1, 0, 0], 8: [0, 0, 1, 0], 9: [0, 0, 0, 1]}
    for cls, row in zip(range(10), t):
        np.testing.assert_array_equal(row, expected.get(cls, [0.25] * 4))
    assert t.dtype == np.float32


def test_openset_labels_groups():
    original = np.array([0, 1, 2, 4, 6, 9, 8, 5, 7, 3])
    indices, labels = openset_labels(original, SPLIT, groups=("known", "unknown"))
    np.testing.assert_array_equal(indices, [1, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(labels, [UNKNOWN, 0, UNKNOWN, 3, 2, 1])
    indices, labels = openset_labels(original, SPLIT, groups=("known", "negative"))
    np.testing.assert_array_equal(labels, [NEGATIVE, NEGATIVE, 0, 3, 2, 1, NEGATIVE, NEGATIVE])
    with pytest.raises(ValueError, match="overlap"):
        OpenSetSplit(known=(1, 2), negative=(2,))


def test_split_batch():
    inputs = np.arange(5)
    labels = np.array([2, -1, 0, -2, 3])
    known_inputs, known_targets, unknown_inputs = split_batch(inputs, np.asarray(targets(labels, 4)))
    np.testing.assert_array_equal(known_inputs, [0, 2, 4])
    np.testing.assert_array_equal(known_targets.argmax(-1), [2, 0, 3])
    np.testing.assert_array_equal(unknown_inputs, [1, 3])


def test_eos_sums_over_classes():
    # Regression test for averaging over classes: that would give log(4) / 4 and 1.2 / 4.
    zeros = jnp.zeros((3, 4))
    uniform = targets(jnp.array([-1, -2, -1]), 4)
    assert float(entropic_openset_loss(zeros, uniform)) == pytest.approx(np.log(4), rel=1e-6)
    # log-sum-exp of (2, 0, -1, 0.5) is 2.34235; known class 0: 2.34235 - 2 = 0.34235;
    # uniform: 2.34235 - mean(z) = 1.96735.
    logits = jnp.array([[2.0, 0.0, -1.0, 0.5]])
    for label, expected in ((0, 0.34235), (-1, 1.96735)):
        t = targets(jnp.array([label]), 4)
        assert float(entropic_openset_loss(logits, t)) == pytest.approx(expected, abs=1e-5)
        assert float(entropic_openset_loss_log_softmax(logits, t)) == pytest.approx(expected, abs=1e-5)


def test_custom_gradient_equals_autodiff():
    logits = jax.random.normal(jax.random.key(0), (16, 4)) * 3.0
    t = targets(jnp.array([0, 1, 2, 3, -1, -2, -1, -2] * 2), 4)
    custom = jax.grad(entropic_openset_loss, argnums=(0, 1))(logits, t)
    autodiff = jax.grad(entropic_openset_loss_log_softmax, argnums=(0, 1))(logits, t)
    for a, b in zip(custom, autodiff):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(custom[0], (jax.nn.softmax(logits) - t) / 16, rtol=1e-6, atol=1e-8)
    # Through jit and a network, as in training.
    loss = jax.jit(jax.value_and_grad(lambda z: 2.0 * entropic_openset_loss(z, t)))
    value, grad = loss(logits)
    assert float(value) == pytest.approx(2.0 * float(entropic_openset_loss_log_softmax(logits, t)), rel=1e-6)
    np.testing.assert_allclose(grad, 2.0 * autodiff[0], rtol=1e-5, atol=1e-7)


def test_confidence_close_to_one_for_ideal_logits():
    labels = jnp.array([0, 1, 2, 3, -1, -2])
    t = targets(labels, 4)
    ideal = jnp.where(labels[:, None] >= 0, 20.0 * jax.nn.one_hot(labels, 4), 0.0)
    np.testing.assert_allclose(confidence(ideal, t), 1.0, atol=1e-6)
    # Wrong answers: knowns get y_t, unknowns 1 - max y + 1/O.
    wrong = jnp.where(
        labels[:, None] >= 0, 20.0 * jax.nn.one_hot((labels + 1) % 4, 4), 20.0 * jax.nn.one_hot(0, 4)
    )
    np.testing.assert_allclose(confidence(wrong, t), [0.0] * 4 + [0.25] * 2, atol=1e-6)


def test_objectosphere_penalty():
    features = jnp.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 2.0]])
    known = jnp.array([True, True, True, False])
    # knowns: max(0, 6 - 5)^2 = 1, max(0, 6 - 1)^2 = 25, max(0, 6 - 10)^2 = 0; negative: 2^2 = 4.
    assert float(objectosphere_penalty(features, known, xi=6.0)) == pytest.approx(30.0 / 4)


def test_lenet_shapes_and_bias_free_logits():
    model = LeNet(num_classes=4, feature_dim=8)
    images = jnp.zeros((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), images)
    features, logits = model.apply(variables, images)
    assert features.shape == (2, 8) and logits.shape == (2, 4)
    params = variables["params"]
    assert params["conv1"]["kernel"].shape == (5, 5, 1, 16)
    assert params["conv2"]["kernel"].shape == (5, 5, 16, 32)
    assert params["fc1"]["kernel"].shape == (7 * 7 * 32, 8)
    assert set(params["fc2"]) == {"kernel"}


def test_train_step_adds_the_objectosphere_term():
    model = LeNet(num_classes=4, feature_dim=8)
    images = jax.random.randint(jax.random.key(1), (6, 28, 28, 1), 0, 256).astype(jnp.uint8)
    labels = jnp.array([0, 1, 2, -1, -1, 3])
    batch = {"image": images, "label": labels, "target": targets(labels, 4)}
    params = model.init(jax.random.key(0), preprocess(images))["params"]
    config = ml_collections.ConfigDict({"objectosphere": {"weight": 0.5, "xi": 3.0}})
    tx = optax.sgd(1.0)
    new_params, _, sums = train_step(params, tx.init(params), batch, model, tx, config)

    def expected_loss(params):
        features, logits = model.apply({"params": params}, preprocess(images))
        return entropic_openset_loss_log_softmax(logits, batch["target"]) + 0.5 * objectosphere_penalty(
            features, labels >= 0, 3.0
        )

    grads = jax.grad(expected_loss)(params)
    jax.tree.map(
        lambda new, old, g: np.testing.assert_allclose(new, old - g, atol=1e-6), new_params, params, grads
    )
    assert float(sums["known"]) == 4 and float(sums["negative"]) == 2 and float(sums["count"]) == 6
