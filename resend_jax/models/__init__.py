"""Flax models: the ResNet-18 backbone, ReSeND's relational transformer, and ReSeND itself."""

from typing import Any

import jax.numpy as jnp

from resend_jax.models.relational import RelationalTransformer
from resend_jax.models.resend import ReSeND
from resend_jax.models.resnet import FEATURE_DIM, BatchNorm, ResNet18

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_resend(config: dict[str, Any]) -> ReSeND:
    """ReSeND from a plain model config: ``stem``, ``embed_dim``, ``depth``, ``num_heads``,
    ``head_zero_init``, ``pair_tokens``, ``cosine_residual``, ``distance_residual``, ``whitening``,
    ``whitening_shrinkage``, ``dtype``."""
    config = dict(config)
    dtype = config.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    unknown = set(config) - {
        "stem",
        "embed_dim",
        "depth",
        "num_heads",
        "head_zero_init",
        "pair_tokens",
        "cosine_residual",
        "distance_residual",
        "whitening",
        "whitening_shrinkage",
    }
    if unknown:
        raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    return ReSeND(dtype=DTYPES[dtype], **config)


__all__ = [
    "DTYPES",
    "FEATURE_DIM",
    "BatchNorm",
    "ReSeND",
    "RelationalTransformer",
    "ResNet18",
    "build_resend",
]
