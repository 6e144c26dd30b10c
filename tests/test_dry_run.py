"""``--dry_run``: the ReSeND step compiled on a simulated 2-device mesh, no data read."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).parents[1]


def test_dry_run_reports_memory_flops_and_the_host_rate(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, "-m", "resend_jax.train", "--config", "configs/resend_imagenet.py:smoke",
        "--workdir", str(tmp_path), "--dry_run", "--config.dry_run_step_s=0.5",
        "--config.data.train=idx:/nonexistent:train",  # never opened
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "each host's input pipeline must deliver 32 images/s" in result.stdout
    assert not (tmp_path / "checkpoints").exists()
    plan = json.loads((tmp_path / "dry_run.json").read_text())

    from resend_jax.models import build_resend

    model = build_resend({"stem": "imagenet", "embed_dim": 64, "depth": 1, "num_heads": 2})
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, images)["params"]
    params_bytes = 4 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert (plan["devices"], plan["hosts"], plan["global_batch"], plan["images_per_step"]) == (2, 1, 8, 16)
    assert plan["params_bytes"] == params_bytes
    assert plan["optimizer_bytes"] >= params_bytes  # LARS keeps a momentum per parameter
    memory = plan["per_device_bytes"]
    # Each device holds the replicated state (parameters, statistics, optimizer) and its 4 pairs.
    batch_bytes = 4 * (2 * 4 * 32 * 32 * 3 + 4)
    assert memory["arguments"] >= plan["params_bytes"] + plan["optimizer_bytes"] + batch_bytes
    assert memory["temporaries"] > 0
    # Convolutions alone: 2 x the multiply-adds of a ResNet-18 forward at 32 px (~37 MMAC per
    # image) for 16 images, and the backward pass at least as much again.
    assert plan["flops_per_step"] > 2 * 2 * 16 * 37e6
    assert plan["images_per_second_per_host"] == 16 / 0.5
