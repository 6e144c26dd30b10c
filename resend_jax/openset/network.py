"""The exercise's small network: two conv + max-pool + ReLU layers, two fully connected layers."""

import jax
import jax.numpy as jnp
from flax import linen as nn


class LeNet(nn.Module):
    """Returns ``(deep_feature, logits)``: the first FC layer's output and the second's.

    The deep feature has no activation, and the logit layer has no bias, so a zero feature gives a
    uniform softmax (the Objectosphere's premise). Inputs are (N, H, W, C) floats.
    """

    num_classes: int
    conv_features: tuple[int, int] = (16, 32)
    kernel_size: int = 5
    feature_dim: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, features in enumerate(self.conv_features):
            x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding="SAME", name=f"conv{i + 1}")(
                x
            )
            x = nn.relu(nn.max_pool(x, (2, 2), strides=(2, 2)))
        deep_feature = nn.Dense(self.feature_dim, name="fc1")(x.reshape(x.shape[0], -1))
        logits = nn.Dense(self.num_classes, use_bias=False, name="fc2")(deep_feature)
        return deep_feature, logits


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 (N, H, W, C) -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0
