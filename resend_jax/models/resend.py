"""ReSeND: a ResNet-18 backbone and a relational transformer that scores image pairs."""

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from resend_jax.models.relational import RelationalTransformer, normalized
from resend_jax.models.resnet import FEATURE_DIM, ResNet18
from resend_jax.models.whitening import (
    WHITENINGS,
    Whitening,
    whitening_from_covariance,
    within_class_covariance,
)

WHITENING_MOMENTUM = 0.9  # of the running within-class covariance, per training step

Dtype = Any


class ReSeND(nn.Module):
    """``__call__(image_a, image_b)`` -> (N,) pair logits; 0 = same class, high = different.

    Both images of every pair go through the backbone in one batch, as in the reference, so
    batch-norm statistics in training cover all 2N images.

    ``whitening`` and ``whitening_shrinkage`` say what the relation's inputs are
    (``models/whitening.py``): callers whiten the features they relate, with the support's
    statistics at test time and ``training_whitening`` in training.
    """

    stem: str = "imagenet"
    embed_dim: int = 768
    depth: int = 4
    num_heads: int = 12
    head_zero_init: bool = False
    pair_tokens: str = "features"
    cosine_residual: bool = False
    distance_residual: bool = False
    whitening: str = "none"
    whitening_shrinkage: float = 0.5
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.whitening not in WHITENINGS:
            raise ValueError(f"model.whitening must be one of {WHITENINGS}, got {self.whitening!r}")
        # The running covariance is a batch statistic: absent when only params are passed.
        if self.whitening != "none" and (
            self.is_initializing() or self.has_variable("batch_stats", "whitening_covariance")
        ):
            zeros = partial(jnp.zeros, dtype=jnp.float32)
            self.whitening_covariance = self.variable(
                "batch_stats", "whitening_covariance", zeros, (FEATURE_DIM, FEATURE_DIM)
            )
            self.whitening_weight = self.variable("batch_stats", "whitening_weight", zeros, ())
        self.backbone = ResNet18(stem=self.stem, dtype=self.dtype)
        self.relational = RelationalTransformer(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            head_zero_init=self.head_zero_init,
            pair_tokens=self.pair_tokens,
            cosine_residual=self.cosine_residual,
            distance_residual=self.distance_residual,
            dtype=self.dtype,
        )

    def __call__(self, image_a: jax.Array, image_b: jax.Array, train: bool = False) -> jax.Array:
        features = self.backbone(jnp.concatenate([image_a, image_b]), train=train)
        features_a, features_b = jnp.split(features, 2)
        return self.relational(features_a, features_b)

    def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images (N, H, W, 3), normalised -> (N, 512) float32 features."""
        return self.backbone(images, train=train)

    def training_whitening(self, features: jax.Array, onehot: jax.Array) -> Whitening:
        """The whitening of a training batch's (N, 512) features with (N, C) one-hot classes: its
        centre, and the running average of the within-class covariance updated with it (a
        statistic, as batch norm's: no gradient flows through it)."""
        centre, covariance = within_class_covariance(jax.lax.stop_gradient(features), onehot)
        if not self.is_initializing():
            momentum = WHITENING_MOMENTUM
            self.whitening_covariance.value = (
                momentum * self.whitening_covariance.value + (1 - momentum) * covariance
            )
            self.whitening_weight.value = momentum * self.whitening_weight.value + (1 - momentum)
        average = self.whitening_covariance.value / jnp.maximum(self.whitening_weight.value, 1e-12)
        return whitening_from_covariance(centre, average, self.whitening_shrinkage)

    def relate(self, features_a: jax.Array, features_b: jax.Array) -> jax.Array:
        """Two (N, 512) feature arrays -> (N,) logits."""
        return self.relational(features_a, features_b)

    def relate_all(self, test_features: jax.Array, prototypes: jax.Array) -> jax.Array:
        """(N, 512) test features x (C, 512) prototypes -> (N, C) logits of (test, prototype).

        With the reference's pair tokens each feature is projected once; the N*C pairs then share
        one transformer call. Symmetric pair tokens depend on both features, so each pair is built.
        """
        n, c = test_features.shape[0], prototypes.shape[0]
        if self.pair_tokens != "features":
            pairs_a = jnp.repeat(test_features, c, axis=0)
            return self.relational(pairs_a, jnp.tile(prototypes, (n, 1))).reshape(n, c)
        tokens_test = self.relational.project(test_features)
        tokens_proto = self.relational.project(prototypes)
        tokens_a = jnp.repeat(tokens_test, c, axis=0)
        tokens_b = jnp.tile(tokens_proto, (n, 1))
        logits = self.relational.relate_tokens(tokens_a, tokens_b).reshape(n, c)
        if self.cosine_residual:
            logits += self.relational.cosine_logit(normalized(test_features) @ normalized(prototypes).T)
        if self.distance_residual:
            test_features, prototypes = test_features.astype(jnp.float32), prototypes.astype(jnp.float32)
            squared = (
                jnp.sum(test_features**2, -1)[:, None]
                + jnp.sum(prototypes**2, -1)[None]
                - 2 * test_features @ prototypes.T
            )
            logits += self.relational.distance_logit(squared / test_features.shape[-1])
        return logits
