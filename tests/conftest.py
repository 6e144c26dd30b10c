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
