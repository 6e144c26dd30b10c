"""Checkpoint import: the three input formats and the listed errors for bad checkpoints."""

import json

import numpy as np
import pytest
import torch

import resend_jax
from resend_jax import convert_torch
from resend_jax.convert_torch import ConversionError, convert_files


def test_duplicated_backbone_keys_and_ignored_keys(official_checkpoint):
    directory, _, _ = official_checkpoint
    state = torch.load(directory / "feature_extractor.pkl", weights_only=True)
    assert "model_resnet.conv1.weight" in state and "conv1.weight" in state
    assert "model_resnet.fc.weight" in state
    assert any(k.endswith("num_batches_tracked") for k in state)


def test_single_file_variant_equals_two_files(official_checkpoint, converted, tmp_path):
    directory, _, _ = official_checkpoint
    backbone = torch.load(directory / "feature_extractor.pkl", weights_only=True)
    relational = torch.load(directory / "cls_rel.pkl", weights_only=True)
    single = {f"feature_extractor.{k}": v for k, v in backbone.items()}
    single |= {f"cls_rel.{k}": v for k, v in relational.items()}
    torch.save(single, tmp_path / "resend.pth")
    out = convert_files(tmp_path / "model", resend=str(tmp_path / "resend.pth"))
    features = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    a = resend_jax.load_model(out).relate(features, features[::-1])
    b = resend_jax.load_model(converted).relate(features, features[::-1])
    np.testing.assert_array_equal(a, b)


def test_torchvision_backbone_only_init(official_checkpoint, converted, tmp_path):
    _, feature_extractor, _ = official_checkpoint
    torch.save(feature_extractor.model_resnet.state_dict(), tmp_path / "resnet18.pth")
    out = convert_files(tmp_path / "model", torchvision_resnet18=str(tmp_path / "resnet18.pth"))
    meta = json.loads((out / "model.json").read_text())
    assert meta["image_size"] == 224
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        resend_jax.load_model(out).embed(images), resend_jax.load_model(converted).embed(images), rtol=1e-6
    )


def test_bad_checkpoint_lists_every_problem(official_checkpoint, tmp_path):
    directory, _, _ = official_checkpoint
    relational = torch.load(directory / "cls_rel.pkl", weights_only=True)
    del relational["blocks.2.mlp.fc1.bias"]
    relational["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    relational["head.weight"] = torch.zeros(2, 768)
    torch.save(relational, tmp_path / "cls_rel.pkl")
    with pytest.raises(ConversionError) as error:
        convert_files(
            tmp_path / "model",
            feature_extractor=str(directory / "feature_extractor.pkl"),
            relational=str(tmp_path / "cls_rel.pkl"),
        )
    message = str(error.value)
    assert "missing keys (1)" in message and "blocks.2.mlp.fc1.bias" in message
    assert "unexpected keys (1)" in message and "blocks.9.attn.qkv.weight" in message
    assert "shape mismatches (1)" in message and "head.weight has shape (2, 768)" in message
    assert not (tmp_path / "model").exists()


def test_conflicting_backbone_copies(official_checkpoint, tmp_path):
    directory, _, _ = official_checkpoint
    state = torch.load(directory / "feature_extractor.pkl", weights_only=True)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"] + 1
    torch.save(state, tmp_path / "fe.pkl")
    with pytest.raises(ConversionError, match="layer1.0.conv1.weight"):
        convert_files(
            tmp_path / "m",
            feature_extractor=str(tmp_path / "fe.pkl"),
            relational=str(directory / "cls_rel.pkl"),
        )


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "fe.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="fe.pkl"):
        convert_torch.load_state_dict(tmp_path / "fe.pkl")
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        convert_torch.load_state_dict(tmp_path / "nothere.pkl")


def test_directory_without_a_model_names_what_loads(tmp_path):
    """A workdir of another kind of run (no model.json) says which directories load."""
    (tmp_path / "mode_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"mode_run/model.json not found: .*ReSeND training run"):
        resend_jax.load_model(tmp_path / "mode_run")


def test_model_of_wrong_shape_is_a_clear_error(converted, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["model"]["embed_dim"] = 384
    meta["model"]["num_heads"] = 6
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match|shapes"):
        resend_jax.load_model(copy)


def test_cli_converts(official_checkpoint, tmp_path):
    import subprocess
    import sys

    directory, _, _ = official_checkpoint
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "resend_jax.convert_torch",
            f"--feature_extractor={directory / 'feature_extractor.pkl'}",
            f"--relational={directory / 'cls_rel.pkl'}",
            f"--out={tmp_path / 'cli'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "model.json").is_file()
