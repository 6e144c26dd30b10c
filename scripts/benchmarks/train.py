"""ReSeND train step, JAX against PyTorch eager, on 1 JAX device and on ``--cpu_devices``.

One row per (image size, device count): pairs per second and step time of
``resend_jax.train.resend.train_step`` (jitted, batch sharded over a ``data`` mesh, state
donated, torchlars LARS) and of the reference step in PyTorch eager (``tests/torch_reference``
modules: both images through the backbone in one batch, the relational module, MSE on
``2 * sigmoid(10 * logit) - 1``, LARS-preconditioned SGD), timed in alternating rounds in one
process. The device count is fixed when JAX starts, so each count runs in its own process
(``JAX_NUM_CPU_DEVICES=N``, which ``runtime.use_cpu_cores`` also sets; by default N = one
device per core, which data-parallels the step over the cores); PyTorch always uses the same
threads.
On a GPU machine there is one row per size, on its one GPU, with more pairs per step; JAX
computes in ``--dtype`` and PyTorch in float32.
"""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

SIZES = {32: 64, 64: 32, 224: 8}  # image size -> pairs per step on the CPU
GPU_SIZES = {32: 512, 64: 256, 224: 128}


def run(args) -> list[dict]:
    import jax

    from benchmarks.common import ON_GPU  # the timed JAX runs in the children

    cpu_devices = len(jax.devices("cpu"))  # bench.py's --cpu_devices
    rows = []
    for size, pairs in (GPU_SIZES if ON_GPU else SIZES).items():
        for devices in (1,) if ON_GPU else sorted({1, cpu_devices}):
            env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
            repeats = str(3 if args.quick else 7)
            command = [sys.executable, __file__, str(size), str(pairs), repeats, args.dtype]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if result.returncode:
                raise RuntimeError(
                    f"train benchmark at {size} px, {devices} devices failed:\n{result.stderr[-3000:]}"
                )
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def _measure(size: int, pairs: int, repeats: int, dtype: str) -> dict:
    import jax
    import numpy as np
    import torch
    import torch_reference as ref
    from jax.sharding import NamedSharding, PartitionSpec
    from ml_collections import ConfigDict

    from benchmarks.common import (
        TORCH_DEVICE,
        matmul_ceiling_gflops,
        relational_flops,
        resnet18_flops,
        set_threads,
        time_interleaved,
        torch_sync,
    )
    from resend_jax.models import build_resend
    from resend_jax.train import common
    from resend_jax.train.optim import build_optimizer, warmup_constant
    from resend_jax.train.resend import image_pair_logits, initial_state, train_step

    set_threads()
    config = ConfigDict(
        {
            "seed": 0,
            "lr": 0.008,
            "warmup_steps": 500,
            "optimizer": "lars",
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "lars_trust": 0.001,
            "lars_eps": 1e-8,
            "lars_exclude_bias_and_norm": False,
            "data": {"image_size": size},
        }
    )
    model = build_resend({"dtype": dtype})
    tx = build_optimizer(config)
    mesh = common.data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    state = jax.jit(partial(initial_state, config, model, tx), out_shardings=replicated)(None)
    step = common.jit_train_step(
        partial(
            train_step,
            model=model,
            tx=tx,
            schedule=warmup_constant(config.lr, config.warmup_steps),
            pair_logits=image_pair_logits,
        ),
        mesh,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image_a": rng.standard_normal((pairs, size, size, 3), np.float32),
        "image_b": rng.standard_normal((pairs, size, size, 3), np.float32),
        "target": (rng.random(pairs) < 0.5).astype(np.float32),
    }
    batch = common.global_batch(batch, mesh)
    holder = {"state": state}

    def jax_step():
        holder["state"], metrics = step(holder["state"], batch)
        metrics["loss"].block_until_ready()

    backbone = ref.ResNetFc().train().to(TORCH_DEVICE)
    relational = ref.RelationalTransformer().train().to(TORCH_DEVICE)
    fc = set(backbone.model_resnet.fc.parameters())  # unused, as in the reference
    parameters = [p for p in [*backbone.model_resnet.parameters(), *relational.parameters()] if p not in fc]
    sgd = torch.optim.SGD(parameters, lr=config.lr, momentum=0.9)
    images_a = torch.randn(pairs, 3, size, size, device=TORCH_DEVICE)
    images_b = torch.randn(pairs, 3, size, size, device=TORCH_DEVICE)
    targets = torch.from_numpy(np.asarray(batch["target"])).to(TORCH_DEVICE)

    def torch_step():
        features = backbone(torch.cat((images_a, images_b)))
        logits = relational(torch.cat(features.chunk(2), 1))[:, 0]
        loss = ((2 * torch.sigmoid(10 * logits) - 1 - (2 * targets - 1)) ** 2).mean()
        sgd.zero_grad()
        loss.backward()
        with torch.no_grad():  # torchlars' preconditioning, as in the reference
            for p in parameters:
                w_norm, g_norm = p.norm(), p.grad.norm()
                if w_norm > 0 and g_norm > 0:
                    p.grad.add_(p, alpha=5e-4).mul_(0.001 * w_norm / (g_norm + 5e-4 * w_norm + 1e-8))
        sgd.step()
        torch_sync()

    seconds = time_interleaved({"jax": jax_step, "torch": torch_step}, repeats=repeats, warmup=2)
    flops = 3 * (2 * pairs * resnet18_flops(size) + relational_flops(pairs))
    ceiling = matmul_ceiling_gflops(dtype)["ceiling"]
    return {
        "px": size,
        "dtype": dtype,
        "devices": jax.device_count(),
        "pairs": pairs,
        "jax_step_s": seconds["jax"],
        "torch_step_s": seconds["torch"],
        "jax_pairs_s": pairs / seconds["jax"],
        "torch_pairs_s": pairs / seconds["torch"],
        "ratio": seconds["torch"] / seconds["jax"],
        "jax_gflops": flops / seconds["jax"] / 1e9,
        "ceiling_gflops": ceiling,
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    sys.path.insert(0, str(Path(__file__).parent.parent.parent / "tests"))
    print(json.dumps(_measure(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
