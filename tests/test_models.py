"""ReSeND in Flax against the PyTorch reference: parameter counts, shapes and parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import resend_jax
from resend_jax.inference import abstract_variables
from resend_jax.models import ResNet18, build_resend

RTOL = 1e-4  # max |jax - torch| / max |torch| over each output


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_parameter_counts_match_reference():
    variables = abstract_variables(build_resend({}))
    assert count(variables["params"]["relational"]) == 28_748_545
    assert count(variables["params"]["backbone"]) == 11_176_512
    assert count(variables["params"]) == 39_925_057


def test_relational_init_is_timms_trunc_normal():
    """timm's trunc_normal_(std=.02) cuts at +-2 absolute: about 4.55% of draws lie beyond 2 std
    (Flax's truncated_normal has none there), and the std is .02."""
    from resend_jax.models.relational import RelationalTransformer

    module = RelationalTransformer(embed_dim=768, depth=1, num_heads=12)
    params = module.init(jax.random.key(0), jnp.zeros((1, 512)), jnp.zeros((1, 512)))["params"]
    for kernel in (params["proj"]["kernel"], params["blocks_0"]["mlp"]["fc1"]["kernel"], params["cls_token"]):
        kernel = np.asarray(kernel).ravel()
        assert abs(kernel.mean()) < 4 * 0.02 / np.sqrt(kernel.size)
        assert kernel.std() == pytest.approx(0.02, rel=0.08)
        if kernel.size > 100_000:
            assert np.mean(np.abs(kernel) > 0.04) == pytest.approx(0.0455, abs=0.004)
            assert np.abs(kernel).max() > 0.08
    assert not np.any(params["proj"]["bias"])


def test_cifar_stem_shapes():
    model = ResNet18(stem="cifar")
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    features, layer4 = jax.eval_shape(lambda v: model.apply(v, images, return_map=True), variables)
    assert features.shape == (2, 512)
    assert layer4.shape == (2, 4, 4, 512)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)


def test_imagenet_stem_layer4_shape():
    model = ResNet18()
    images = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    _, layer4 = jax.eval_shape(lambda v: model.apply(v, images, return_map=True), variables)
    assert layer4.shape == (1, 7, 7, 512)


@pytest.mark.parametrize("size", [64, 224])
def test_parity_with_official_checkpoint(official_checkpoint, converted, size):
    _, feature_extractor, relational = official_checkpoint
    model = resend_jax.load_model(converted, batch_size=4)
    rng = np.random.default_rng(size)
    images = rng.standard_normal((6, size, size, 3)).astype(np.float32)

    features = model.embed(images)
    with torch.no_grad():
        expected = feature_extractor(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    assert features.shape == (6, 512)
    assert relative_error(features, expected.numpy()) < RTOL

    # Pair logits of every (i, i+1) pair, on the features each framework produced.
    logits = model.relate(features[:-1], features[1:])
    with torch.no_grad():
        expected_logits = relational(torch.cat((expected[:-1], expected[1:]), 1))[:, 0]
    assert relative_error(logits, expected_logits.numpy()) < RTOL

    prototypes = features[:3] + 0.1 * rng.standard_normal((3, 512)).astype(np.float32)
    scores, predictions = model.normality(features, prototypes)
    ref_scores, ref_predictions = resend_jax_reference_normality(relational, expected, prototypes)
    assert relative_error(scores, ref_scores) < RTOL
    np.testing.assert_array_equal(predictions, ref_predictions)


def resend_jax_reference_normality(relational, features, prototypes):
    import torch_reference as ref

    scores, predictions = ref.reference_normality(relational, features, torch.from_numpy(prototypes))
    return scores.numpy(), predictions.numpy()


def test_normality_chunked_equals_single_call(converted):
    model = resend_jax.load_model(converted)
    rng = np.random.default_rng(1)
    features = rng.standard_normal((37, 512)).astype(np.float32)
    prototypes = rng.standard_normal((5, 512)).astype(np.float32)
    scores, predictions = model.normality(features, prototypes)
    model.max_pairs = 10  # 2 test features per chunk, last one padded
    chunked_scores, chunked_predictions = model.normality(features, prototypes)
    # Another batch shape compiles other float32 kernels: agreement to a few ulps of the sums.
    np.testing.assert_allclose(chunked_scores, scores, rtol=1e-5)
    np.testing.assert_array_equal(chunked_predictions, predictions)
    # The softmax over classes of -logits, written out directly.
    logits = np.stack([model.relate(features, np.repeat(p[None], 37, 0)) for p in prototypes], 1)
    probabilities = np.exp(-logits) / np.exp(-logits).sum(1, keepdims=True)
    np.testing.assert_allclose(scores, probabilities.max(1), rtol=1e-5)
    # softmax=False: the largest -logit and its class.
    similarity, closest = model.normality(features, prototypes, softmax=False)
    np.testing.assert_allclose(similarity, (-logits).max(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(closest, logits.argmin(1))


def test_bfloat16_compute_stays_close(converted):
    model32 = resend_jax.load_model(converted)
    model16 = resend_jax.load_model(converted, dtype="bfloat16")
    images = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    assert relative_error(model16.embed(images), model32.embed(images)) < 0.05


def test_symmetric_pair_tokens_compare_rather_than_place():
    """Symmetric pair tokens: the logit is symmetric in the pair, blind to feature norms, and
    relate_all (pairs built per prototype) equals relate on the same pairs."""
    model = build_resend({"embed_dim": 32, "depth": 1, "num_heads": 2, "pair_tokens": "symmetric"})
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((5, 512)), jnp.float32) for _ in range(2))
    params = model.init(jax.random.key(0), a, b, method=model.relate)
    # A non-zero head, so the logits depend on the inputs.
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
    relate = lambda x, y: model.apply(params, x, y, method=model.relate)  # noqa: E731
    ab = relate(a, b)
    assert float(jnp.std(ab)) > 1e-3
    np.testing.assert_allclose(relate(b, a), ab, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relate(3 * a, 0.5 * b), ab, rtol=1e-4, atol=1e-5)
    table = model.apply(params, a, b[:3], method=model.relate_all)
    expected = relate(jnp.repeat(a, 3, axis=0), jnp.tile(b[:3], (5, 1))).reshape(5, 3)
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)


def test_unknown_pair_tokens_is_an_error():
    model = build_resend({"pair_tokens": "sum"})
    with pytest.raises(ValueError, match="pair_tokens"):
        model.init(jax.random.key(0), jnp.ones((1, 512)), jnp.ones((1, 512)), method=model.relate)


def test_cosine_residual_starts_as_the_cosine():
    """With a zero head the logit is ``scale * (bias - cos)`` at its initial 1 and 0.5, in relate
    and in relate_all; without the option nothing is added."""
    model = build_resend(
        {"embed_dim": 32, "depth": 1, "num_heads": 2, "head_zero_init": True, "cosine_residual": True}
    )
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((5, 512)), jnp.float32) for _ in range(2))
    params = model.init(jax.random.key(0), a, b, method=model.relate)
    cosines = np.sum(np.asarray(a) * np.asarray(b), 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(
        model.apply(params, a, b, method=model.relate), 0.5 - cosines, rtol=1e-5, atol=1e-6
    )
    table = model.apply(params, a, b[:3], method=model.relate_all)
    a_unit = np.asarray(a) / np.linalg.norm(a, axis=1, keepdims=True)
    b_unit = np.asarray(b[:3]) / np.linalg.norm(b[:3], axis=1, keepdims=True)
    np.testing.assert_allclose(table, 0.5 - a_unit @ b_unit.T, rtol=1e-5, atol=1e-6)
    plain = build_resend({"embed_dim": 32, "depth": 1, "num_heads": 2, "head_zero_init": True})
    plain_params = plain.init(jax.random.key(0), a, b, method=plain.relate)
    np.testing.assert_array_equal(plain.apply(plain_params, a, b, method=plain.relate), np.zeros(5))
