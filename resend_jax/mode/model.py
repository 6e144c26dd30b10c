"""MODE's network: a ResNet-18 with the SupCon head, ALPA's q/k/v projectors and a classifier.

One ``__call__`` returns every output; under ``jax.jit`` XLA drops the ones a loss does not use.
Every linear layer has ``torch.nn.Linear``'s default init, as the reference: weights and biases
U(+-1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), not Flax's LeCun normal and zero bias.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from resend_jax.models.resnet import FEATURE_DIM, ResNet18

Dtype = Any


def torch_linear(features: int, fan_in: int, use_bias: bool = True, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` initialised as ``torch.nn.Linear(fan_in, features)``: U(+-1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
        bias_init=bias_init,
        name=name,
    )


class MLP(nn.Module):
    """``Linear(hidden) - ReLU - Linear(out)`` on the last axis."""

    hidden: int
    out: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(torch_linear(self.hidden, x.shape[-1], self.use_bias, name="fc1")(x))
        return torch_linear(self.out, self.hidden, self.use_bias, name="fc2")(x)


class MODENet(nn.Module):
    """images (N, H, W, 3) -> dict of the outputs every MODE loss and score reads.

    ``features`` (N, 512) pooled; ``map`` (N, h, w, 512) layer4; ``embedding`` (N, head_dim)
    the L2-normalised SupCon head; ``query``/``key``/``value`` (N, h*w, proj_dim) ALPA's shared
    per-position projectors (``Linear(512, 512) - ReLU - Linear(512, proj_dim)``, no biases);
    ``logits`` (N, num_classes) the linear classifier of the cross-entropy mode.
    """

    num_classes: int
    stem: str = "cifar"
    head_dim: int = 128
    proj_dim: int = 80
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        features, feature_map = ResNet18(self.stem, self.dtype, name="backbone")(
            images, train=train, return_map=True
        )
        embedding = MLP(FEATURE_DIM, self.head_dim, name="head")(features)
        embedding = embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=-1, keepdims=True), 1e-12)
        positions = feature_map.reshape(feature_map.shape[0], -1, feature_map.shape[-1])
        projected = {
            name: MLP(FEATURE_DIM, self.proj_dim, use_bias=False, name=name)(positions)
            for name in ("query", "key", "value")
        }
        return {
            "features": features,
            "map": feature_map,
            "embedding": embedding,
            "logits": torch_linear(self.num_classes, FEATURE_DIM, name="classifier")(features),
            **projected,
        }


def build_model(model_config: dict[str, Any], num_classes: int) -> MODENet:
    """``MODENet`` from ``config.model`` (stem, head_dim, proj_dim, dtype)."""
    config = dict(model_config)
    return MODENet(
        num_classes=num_classes,
        stem=config.get("stem", "cifar"),
        head_dim=config.get("head_dim", 128),
        proj_dim=config.get("proj_dim", 80),
        dtype=jnp.dtype(config.get("dtype", "float32")),
    )
