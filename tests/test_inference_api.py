"""The Python API refuses inputs that would give numbers that look right and mean nothing."""

import warnings

import jax
import numpy as np
import pytest

from resend_jax.data.transforms import normalize
from resend_jax.inference import NoveltyModel, abstract_variables
from resend_jax.models import build_resend


@pytest.fixture(scope="module")
def model():
    """A small ReSeND (one 64-wide transformer block) with constant weights (no init to compile)."""
    module = build_resend({"embed_dim": 64, "depth": 1, "num_heads": 2})
    variables = jax.tree.map(lambda v: np.full(v.shape, 0.01, v.dtype), abstract_variables(module, 32))
    return NoveltyModel(module, variables, image_size=32, batch_size=2)


def test_feature_width_is_read_from_the_model_and_checked(model):
    assert model.feature_dim == 512
    good, narrow = np.ones((3, 512)), np.ones((3, 256))
    with pytest.raises(
        ValueError, match=r"relate: features_b must be \(N, 512\) features .* got shape \(3, 256\)"
    ):
        model.relate(good, narrow)
    with pytest.raises(
        ValueError, match=r"normality: test_features must be \(N, 512\) .* got shape \(3, 256\)"
    ):
        model.normality(narrow, good)
    with pytest.raises(ValueError, match=r"normality: prototypes must be \(C, 512\) .* got shape \(3, 256\)"):
        model.normality(good, narrow)
    with pytest.raises(
        ValueError, match=r"similarities: references must be \(M, 512\) .* got shape \(512,\)"
    ):
        model.similarities(good, good[0])
    assert model.relate(good, good).shape == (3,)


def test_embed_refuses_integer_images_and_warns_on_0_255_floats(model):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"embed expects float images normalised .* got uint8.*normalize"):
        model.embed(pixels)
    with pytest.raises(ValueError, match="embed_with_map expects float images .* got int64"):
        model.embed_with_map(pixels.astype(np.int64), lambda m: m.mean((1, 2)))
    with pytest.warns(UserWarning, match=r"embed: image values reach 255, which looks like 0-255 pixels"):
        raw = model.embed(pixels.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalised = model.embed(normalize(pixels))
    assert raw.shape == normalised.shape == (2, 512)
