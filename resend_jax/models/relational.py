"""ReSeND's relational module: a 4-block pre-LN transformer over [cls, a, b] that scores a pair.

Layout and initialisation follow the reference (timm ViT ``Block``, timm's ``trunc_normal_``):
one shared projection 512 -> 768 turns each feature into a token, no positional embedding, 12
heads of 64 with a fused qkv (rows ordered q; k; v), exact GELU, LayerNorm eps 1e-6, no dropout,
and a linear head on the final-normed cls token that gives one raw logit (high = different classes).

``pair_tokens`` chooses what the two pair tokens are made from:

- ``"features"`` (the reference): the features ``a`` and ``b`` themselves;
- ``"symmetric"``: ``d * (a' * b')`` and ``sqrt(d) * |a' - b'|`` of the L2-normalised features
  ``a'``, ``b'`` (elementwise; d = feature width). The relation then sees how the two features
  agree, dimension by dimension, rather than where each lies: it is blind to feature norms,
  and a class is no longer a region of its input space. (Both are symmetric in the pair: the
  tokens have no positional embedding.)

``cosine_residual`` adds ``scale * (bias - cos(a, b))`` to the logit (``scale`` and ``bias``
learnt, from 1 and 0.5): with a zero-initialised head the relation starts as the cosine to the
prototypes, the score that transfers best at few shots, and learns a correction to it.
``distance_residual`` adds ``scale * (mean((a - b)^2) - bias)`` (from 1 and 1.5) in the same
way: on whitened features (``models/whitening.py``) the relation then starts as the Mahalanobis
distance to the prototype under the known classes' within-class covariance.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any


def timm_trunc_normal(
    std: float = 0.02, lower: float = -2.0, upper: float = 2.0
) -> nn.initializers.Initializer:
    """timm's ``trunc_normal_(std=std, a=lower, b=upper)``: N(0, std^2) cut at ABSOLUTE bounds.

    At std .02 the bounds +-2 are 100 standard deviations away, so the draw is in effect an
    untruncated normal; Flax's ``truncated_normal`` cuts at +-2 std instead.
    """

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, lower / std, upper / std, shape, jnp.float32) * std).astype(
            dtype
        )

    return init


trunc_normal = timm_trunc_normal(0.02)


def dense(features: int, name: str, dtype: Dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=trunc_normal, name=name)


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


PAIR_TOKENS = ("features", "symmetric")


def normalized(features: jax.Array) -> jax.Array:
    """L2-normalised along the last axis (float32)."""
    features = features.astype(jnp.float32)
    return features * jax.lax.rsqrt(jnp.sum(features**2, -1, keepdims=True) + 1e-12)


def symmetric_pair(features_a: jax.Array, features_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, d) x 2 -> ``d * a' * b'`` and ``sqrt(d) * |a' - b'|`` of the L2-normalised features.

    Scaled so that entries are O(1): the first sums to ``d * cos(a, b)``.
    """
    dim = features_a.shape[-1]
    a, b = normalized(features_a), normalized(features_b)
    return dim * a * b, dim**0.5 * jnp.abs(a - b)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, as timm writes it."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, queries: int | None = None) -> jax.Array:
        """(B, T, D) -> (B, queries, D): the outputs of the first ``queries`` tokens (all by default)."""
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = dense(3 * dim, "qkv", self.dtype)(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :queries, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, q.shape[1], dim)
        return dense(dim, "proj", self.dtype)(out)


class Mlp(nn.Module):
    """768 -> 3072 -> 768 with exact (erf) GELU."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(dense(self.hidden, "fc1", self.dtype)(x), approximate=False)
        return dense(x.shape[-1], "fc2", self.dtype)(y)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    num_heads: int
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, queries: int | None = None) -> jax.Array:
        """(B, T, D) -> (B, queries, D); the last block needs only the cls token's output."""
        dim = x.shape[-1]
        attn = Attention(self.num_heads, self.dtype, name="attn")
        x = x[:, :queries] + attn(layer_norm("norm1", self.dtype)(x), queries)
        y = layer_norm("norm2", self.dtype)(x)
        return x + Mlp(dim * self.mlp_ratio, self.dtype, name="mlp")(y)


class RelationalTransformer(nn.Module):
    """Scores pairs of backbone features; ``__call__(a, b)`` -> (N,) raw logits.

    ``project`` and ``relate_tokens`` are exposed separately so that a test set can be compared
    with many prototypes while projecting each feature once.
    """

    embed_dim: int = 768
    depth: int = 4
    num_heads: int = 12
    mlp_ratio: int = 4
    head_zero_init: bool = False
    pair_tokens: str = "features"
    cosine_residual: bool = False
    distance_residual: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.pair_tokens not in PAIR_TOKENS:
            raise ValueError(f"model.pair_tokens must be one of {PAIR_TOKENS}, got {self.pair_tokens!r}")
        if self.cosine_residual:
            self.cosine_scale = self.param("cosine_scale", nn.initializers.ones, (), jnp.float32)
            self.cosine_bias = self.param("cosine_bias", nn.initializers.constant(0.5), (), jnp.float32)
        if self.distance_residual:
            self.distance_scale = self.param("distance_scale", nn.initializers.ones, (), jnp.float32)
            self.distance_bias = self.param("distance_bias", nn.initializers.constant(1.5), (), jnp.float32)
        self.proj = dense(self.embed_dim, "proj", self.dtype)
        self.cls_token = self.param("cls_token", trunc_normal, (1, 1, self.embed_dim), jnp.float32)
        self.blocks = [
            Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}") for i in range(self.depth)
        ]
        self.norm = layer_norm("norm", self.dtype)
        # The reference initialises the head like every Linear (trunc normal .02); zero init
        # (big_vision's default) starts every pair at logit 0, outside the squashed loss's
        # saturated region, which matters when training from scratch.
        head_init = nn.initializers.zeros if self.head_zero_init else trunc_normal
        self.head = nn.Dense(1, dtype=self.dtype, kernel_init=head_init, name="head")

    def project(self, features: jax.Array) -> jax.Array:
        """(N, 512) features -> (N, embed_dim) tokens."""
        return self.proj(features.astype(self.dtype))

    def relate_tokens(self, tokens_a: jax.Array, tokens_b: jax.Array) -> jax.Array:
        """Two (N, embed_dim) token arrays -> (N,) float32 logits."""
        cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (tokens_a.shape[0], 1, self.embed_dim))
        x = jnp.concatenate([cls, tokens_a[:, None], tokens_b[:, None]], axis=1)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.norm(self.blocks[-1](x, queries=1)[:, 0])
        return self.head(x)[:, 0].astype(jnp.float32)

    def cosine_logit(self, cosines: jax.Array) -> jax.Array:
        """``cosine_residual``'s term, ``scale * (bias - cos)``, for cosines of any shape."""
        return self.cosine_scale * (self.cosine_bias - cosines)

    def distance_logit(self, mean_squared_distances: jax.Array) -> jax.Array:
        """``distance_residual``'s term, ``scale * (mean((a - b)^2) - bias)``, for any shape."""
        return self.distance_scale * (mean_squared_distances - self.distance_bias)

    def __call__(self, features_a: jax.Array, features_b: jax.Array) -> jax.Array:
        tokens_a, tokens_b = features_a, features_b
        if self.pair_tokens == "symmetric":
            tokens_a, tokens_b = symmetric_pair(features_a, features_b)
        logits = self.relate_tokens(self.project(tokens_a), self.project(tokens_b))
        if self.cosine_residual:
            logits += self.cosine_logit(jnp.sum(normalized(features_a) * normalized(features_b), -1))
        if self.distance_residual:
            difference = features_a.astype(jnp.float32) - features_b.astype(jnp.float32)
            logits += self.distance_logit(jnp.mean(difference**2, -1))
        return logits
