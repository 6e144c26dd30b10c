"""Shared fixtures: a reference PyTorch ReSeND saved in the official two-file format."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """(directory, feature_extractor, relational): random reference weights, official keys."""
    import torch
    import torch_reference as ref

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    feature_extractor = ref.ResNetFc().eval()
    ref.randomise_batch_norm(feature_extractor, generator)
    relational = ref.RelationalTransformer().eval()
    directory = tmp_path_factory.mktemp("official")
    torch.save(feature_extractor.state_dict(), directory / "feature_extractor.pkl")
    torch.save(relational.state_dict(), directory / "cls_rel.pkl")
    return directory, feature_extractor, relational


@pytest.fixture(scope="session")
def converted(official_checkpoint, tmp_path_factory):
    """The official checkpoint converted with ``convert_files``; returns its directory."""
    from resend_jax.convert_torch import convert_files

    directory, _, _ = official_checkpoint
    out = tmp_path_factory.mktemp("converted") / "model"
    return convert_files(
        out,
        feature_extractor=str(directory / "feature_extractor.pkl"),
        relational=str(directory / "cls_rel.pkl"),
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A model directory with random weights: the ResNet-18 backbone and a one-block relational
    module of width 32, for 32 px images (fast end-to-end evaluations). The weights are drawn
    with NumPy on the abstract shapes, which is much faster than tracing ``init``."""
    import jax
    import numpy as np

    from resend_jax import checkpoint
    from resend_jax.inference import abstract_variables
    from resend_jax.models import build_resend

    config = {"stem": "imagenet", "embed_dim": 32, "depth": 1, "num_heads": 2, "dtype": "float32"}
    rng = np.random.default_rng(0)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(shape.shape, np.float32)
        if "bias" in name or "mean" in name:
            return np.zeros(shape.shape, np.float32)
        fan_in = int(np.prod(shape.shape[:-1])) or 1
        return (rng.normal(size=shape.shape) / np.sqrt(fan_in)).astype(np.float32)

    shapes = abstract_variables(build_resend(config), 32)
    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    directory = tmp_path_factory.mktemp("tiny") / "model"
    checkpoint.write_model_json(directory, config, 32)
    checkpoint.save_model_variables(directory, variables)
    return directory
