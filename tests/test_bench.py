"""The benchmarks' FLOP counts, which their GFLOP/s columns rest on, against the model itself."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resend_jax.models import ResNet18, layers

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from benchmarks.common import resnet18_flops  # noqa: E402


def _conv_flops(jaxpr) -> int:
    """2 x output elements x kernel taps x input channels, summed over every convolution."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * kernel[0] * kernel[1] * kernel[2]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _conv_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _conv_flops(sub)
    return total


@pytest.mark.parametrize("size, stem", [(32, "imagenet"), (64, "imagenet"), (224, "imagenet"), (32, "cifar")])
def test_resnet18_flops_count_the_model_convolutions(size, stem, monkeypatch):
    """Every convolution through lax (no patch matmul), counted from the traced forward pass."""
    monkeypatch.setattr(layers, "IM2COL_MAX_PIXELS", 0)
    model = ResNet18(stem=stem)
    images = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    jaxpr = jax.make_jaxpr(model.apply)(variables, images).jaxpr
    assert resnet18_flops(size, stem) == _conv_flops(jaxpr)


def test_resnet18_flops_at_224_px_is_the_published_count():
    """1.81 G multiply-adds (He et al. 2016, table 1: 1.8 x 10^9 FLOPs counted as multiply-adds)."""
    np.testing.assert_allclose(resnet18_flops(224) / 2, 1.814e9, rtol=2e-3)
