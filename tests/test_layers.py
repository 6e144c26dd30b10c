"""The fast convolution and max pool against lax / Flax, in value and in gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from resend_jax import runtime
from resend_jax.models import layers


def lax_conv(x, kernel, stride, padding):
    pads = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def flax_max_pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


# (height, width, kernel, stride, padding): odd and tiny maps, every ResNet-18 shape class,
# maps where some taps only see padding (1x1 and 2x1 maps), and larger maps.
CONV_CASES = [
    (1, 1, 3, 1, 1),
    (2, 2, 3, 1, 1),
    (2, 1, 3, 2, 1),
    (3, 5, 3, 2, 1),
    (4, 4, 1, 2, 0),
    (5, 3, 7, 2, 3),
    (7, 7, 3, 2, 1),
    (9, 9, 3, 1, 1),
    (12, 12, 7, 2, 3),
    (10, 10, 1, 2, 0),
    (8, 6, 3, 3, 1),
    (7, 7, 4, 2, 2),
]


@pytest.mark.parametrize("route, max_pixels", [("patch matmul", 10**6), ("lax", 0)])
@pytest.mark.parametrize("height, width, kernel, stride, padding", CONV_CASES)
def test_conv2d_equals_lax_conv(height, width, kernel, stride, padding, route, max_pixels, monkeypatch):
    """Every case through both routes: the patch matmul, and lax's convolution with the phase-wise
    input gradient for strides above 1 (stride 3, an even kernel and phases no tap reaches included).
    Jitted as the models are (op by op, each of the patch matmul's slices would compile alone)."""
    monkeypatch.setattr(layers, "IM2COL_MAX_PIXELS", max_pixels)  # read when traced
    rng = np.random.default_rng(height * 100 + width * 10 + kernel)
    x = jnp.asarray(rng.standard_normal((3, height, width, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 4)), jnp.float32)

    def value_and_grads(conv):
        @runtime.jit
        def run(x, w, g):
            y, vjp = jax.vjp(lambda x, w: conv(x, w, stride, padding), x, w)
            return y, vjp(g)

        return run

    g = jnp.asarray(rng.standard_normal(lax_conv(x, w, stride, padding).shape), jnp.float32)
    expected, expected_grads = value_and_grads(lax_conv)(x, w, g)
    actual, grads = value_and_grads(layers.conv2d)(x, w, g)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads, expected_grads):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_conv_module_keeps_the_nn_conv_parameter():
    x = jnp.ones((1, 8, 8, 3))
    ours = layers.Conv(16, 3, 2, 1).init(jax.random.key(0), x)
    theirs = nn.Conv(16, (3, 3), use_bias=False).init(jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert ours["params"]["kernel"].shape == (3, 3, 3, 16)


@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (2, 6, 6, 4), (1, 1, 1, 2), (3, 2, 3, 2), (2, 16, 16, 8)])
def test_max_pool_equals_flax_with_ties(shape):
    rng = np.random.default_rng(sum(shape))
    # Rounded values and a block of zeros give ties inside windows (as after a ReLU).
    x = np.round(rng.standard_normal(shape), 1).astype(np.float32)
    x[0, : shape[1] // 2, : shape[2] // 2] = 0
    x = jnp.asarray(x)

    def value_and_grad(pool):
        @runtime.jit
        def run(x, g):
            y, vjp = jax.vjp(pool, x)
            return y, vjp(g)[0]

        return run

    g = jnp.asarray(rng.standard_normal(flax_max_pool(x).shape), jnp.float32)
    expected, expected_grad = value_and_grad(flax_max_pool)(x, g)
    actual, grad = value_and_grad(layers.max_pool)(x, g)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)


def _layout_transposes(hlo: str, shape: str) -> list[int]:
    """Operand counts of the compiled HLO's transpose fusions that produce ``shape``."""
    pattern = r"%transpose\S* = " + re.escape(shape) + r"\{[\d,]+\} fusion\(([^)]*)\)"
    return [len(operands.split(",")) for operands in re.findall(pattern, hlo)]


def test_kernel_gradient_reads_the_stored_convolution_input():
    """Eigen's kernel gradient wants its input as (C, H, W, N). The transpose that makes it must
    read the stored input, not recompute the batch norm and ReLU before it (``_kept_in_memory``;
    without it this transpose reads three operands)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 28, 28, 4)), jnp.float32)
    w1 = jnp.asarray(rng.standard_normal((3, 3, 4, 16)), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((3, 3, 16, 16)), jnp.float32)
    scale, shift = jnp.ones(16), jnp.zeros(16)

    def loss(w1, w2, scale, shift):
        y = jax.nn.relu(layers.conv2d(x, w1, 1, 1) * scale + shift)
        return jnp.sum(jnp.square(layers.conv2d(y, w2, 1, 1)))

    hlo = runtime.jit(jax.grad(loss, argnums=(0, 1))).lower(w1, w2, scale, shift).compile().as_text()
    assert _layout_transposes(hlo, "f32[16,28,28,8]") == [1]  # y as (C, H, W, N)
