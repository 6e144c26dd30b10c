"""ResNet-18 V1 (torchvision layout) in Flax linen, NHWC.

Two stems: ``imagenet`` (7x7/2 conv pad 3, BN, ReLU, 3x3/2 max pool pad 1) as in torchvision and
ReSeND, and ``cifar`` (3x3/1 conv pad 1, no max pool) as in MODE. Paddings are explicit, never
'SAME', so that outputs equal PyTorch's at every image size.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from resend_jax.models.layers import Conv, max_pool

Dtype = Any

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)
FEATURE_DIM = 512


class BatchNorm(nn.Module):
    """Batch normalisation with PyTorch semantics.

    Differs from ``flax.linen.BatchNorm`` in one place that matters for fidelity: the running
    variance is updated with the unbiased batch variance, as ``torch.nn.BatchNorm2d`` does.
    Statistics are reduced over every axis but the last; under ``jax.jit`` with a batch sharded
    over a mesh this is the global batch (PyTorch's SyncBatchNorm) with no extra code.
    """

    use_running_average: bool
    momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch.
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                count = x.size // features
                unbiased = var * (count / max(count - 1, 1))
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased

        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)).astype(self.dtype)


def conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Dtype) -> Conv:
    """A bias-free convolution with PyTorch's explicit symmetric padding."""
    return Conv(features, kernel, stride, padding, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1/2 conv + BN when shapes change)."""

    features: int
    stride: int
    train: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = lambda name: BatchNorm(not self.train, dtype=self.dtype, name=name)  # noqa: E731
        y = conv(self.features, 3, self.stride, 1, "conv1", self.dtype)(x)
        y = nn.relu(norm("bn1")(y))
        y = conv(self.features, 3, 1, 1, "conv2", self.dtype)(y)
        y = norm("bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.stride, 0, "downsample_conv", self.dtype)(x)
            x = norm("downsample_bn")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """ResNet-18 backbone without the classifier: images (N, H, W, 3) -> features (N, 512).

    With ``return_map=True`` also returns the layer4 map (N, h, w, 512), which MODE's local
    features and the CSD score use.
    """

    stem: str = "imagenet"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, return_map: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        x = images.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(64, 7, 2, 3, "conv1", self.dtype)(x)
            x = nn.relu(BatchNorm(not train, dtype=self.dtype, name="bn1")(x))
            x = max_pool(x, 3, 2, 1)
        elif self.stem == "cifar":
            x = conv(64, 3, 1, 1, "conv1", self.dtype)(x)
            x = nn.relu(BatchNorm(not train, dtype=self.dtype, name="bn1")(x))
        else:
            raise ValueError(f"ResNet18 stem must be 'imagenet' or 'cifar', got {self.stem!r}")

        for stage, (width, blocks) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE), start=1):
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                x = BasicBlock(width, stride, train, self.dtype, name=f"layer{stage}_{block}")(x)

        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_map:
            return features, x.astype(jnp.float32)
        return features
