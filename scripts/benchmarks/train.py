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

With ``--separate`` each framework runs in a process of its own instead, one after the other.
On the 2-core CPU, JAX's step slowed by 5% to 70% when it alternated with PyTorch's in one
process (docs/cpu_performance.md); this shows each without the other.

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
LR = 0.008  # of the timed steps (their cost does not depend on it)


def run(args) -> list[dict]:
    import jax

    from benchmarks.common import ON_GPU  # the timed JAX runs in the children

    cpu_devices = len(jax.devices("cpu"))  # bench.py's --cpu_devices
    repeats = 3 if args.quick else 7
    rows = []
    for size, pairs in (GPU_SIZES if ON_GPU else SIZES).items():
        if args.separate:  # PyTorch's step does not depend on JAX's device count
            torch_seconds = _child(size, pairs, repeats, args.dtype, 1, "torch")["seconds"]
        for devices in (1,) if ON_GPU else sorted({1, cpu_devices}):
            if not args.separate:
                rows.append(_child(size, pairs, repeats, args.dtype, devices, "jax,torch"))
                continue
            jax_only = _child(size, pairs, repeats, args.dtype, devices, "jax")
            rows.append(_row(size, pairs, args.dtype, devices, jax_only["seconds"], torch_seconds, jax_only))
    return rows


def _child(size: int, pairs: int, repeats: int, dtype: str, devices: int, frameworks: str) -> dict:
    """Runs ``_measure`` in a fresh process with ``devices`` JAX CPU devices; its JSON output."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
    command = [sys.executable, __file__, str(size), str(pairs), str(repeats), dtype, frameworks]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(
            f"train benchmark ({frameworks}) at {size} px, {devices} devices failed:\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(
    size: int, pairs: int, dtype: str, devices: int, jax_s: float, torch_s: float, measured: dict
) -> dict:
    """The table row; ``measured`` gives the FLOPs and the matmul ceiling of the JAX process."""
    return {
        "px": size,
        "dtype": dtype,
        "devices": devices,
        "pairs": pairs,
        "jax_step_s": jax_s,
        "torch_step_s": torch_s,
        "jax_pairs_s": pairs / jax_s,
        "torch_pairs_s": pairs / torch_s,
        "ratio": torch_s / jax_s,
        "jax_gflops": measured["flops"] / jax_s / 1e9,
        "ceiling_gflops": measured["ceiling_gflops"],
    }


def _jax_step(size: int, pairs: int, dtype: str, targets):
    """A blocking call of the jitted ReSeND train step on a fixed random batch."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from ml_collections import ConfigDict

    from resend_jax.models import build_resend
    from resend_jax.train import common
    from resend_jax.train.optim import build_optimizer, warmup_constant
    from resend_jax.train.resend import image_pair_logits, initial_state, train_step

    config = ConfigDict(
        {
            "seed": 0,
            "lr": LR,
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
        "target": targets,
    }
    batch = common.global_batch(batch, mesh)
    holder = {"state": state}

    def jax_step():
        holder["state"], metrics = step(holder["state"], batch)
        metrics["loss"].block_until_ready()

    return jax_step


def _torch_step(size: int, pairs: int, targets):
    """A blocking call of the reference step in PyTorch eager (torchlars' LARS around SGD)."""
    import torch
    import torch_reference as ref

    from benchmarks.common import TORCH_DEVICE, torch_sync

    backbone = ref.ResNetFc().train().to(TORCH_DEVICE)
    relational = ref.RelationalTransformer().train().to(TORCH_DEVICE)
    fc = set(backbone.model_resnet.fc.parameters())  # unused, as in the reference
    parameters = [p for p in [*backbone.model_resnet.parameters(), *relational.parameters()] if p not in fc]
    sgd = torch.optim.SGD(parameters, lr=LR, momentum=0.9)
    images_a = torch.randn(pairs, 3, size, size, device=TORCH_DEVICE)
    images_b = torch.randn(pairs, 3, size, size, device=TORCH_DEVICE)
    targets = torch.from_numpy(targets).to(TORCH_DEVICE)

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

    return torch_step


def _measure(size: int, pairs: int, repeats: int, dtype: str, frameworks: str) -> dict:
    """Seconds per step of ``frameworks`` (``jax``, ``torch`` or ``jax,torch``: alternating).

    Returns the table row for both, ``{"seconds"}`` for PyTorch alone, and for JAX alone also
    the FLOPs and the matmul ceiling that its row needs.
    """
    import jax
    import numpy as np

    from benchmarks.common import (
        matmul_ceiling_gflops,
        relational_flops,
        resnet18_flops,
        set_threads,
        time_interleaved,
    )

    set_threads()
    targets = (np.random.default_rng(1).random(pairs) < 0.5).astype(np.float32)
    builders = {
        "jax": lambda: _jax_step(size, pairs, dtype, targets),
        "torch": lambda: _torch_step(size, pairs, targets),
    }
    steps = {name: builders[name]() for name in frameworks.split(",")}
    seconds = time_interleaved(steps, repeats, warmup=2)
    if "jax" not in seconds:
        return {"seconds": seconds["torch"]}
    flops = 3 * (2 * pairs * resnet18_flops(size) + relational_flops(pairs))
    measured = {"flops": flops, "ceiling_gflops": matmul_ceiling_gflops(dtype)["ceiling"]}
    if "torch" not in seconds:
        return {**measured, "seconds": seconds["jax"]}
    return _row(size, pairs, dtype, jax.device_count(), seconds["jax"], seconds["torch"], measured)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    sys.path.insert(0, str(Path(__file__).parent.parent.parent / "tests"))
    print(
        json.dumps(_measure(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    )
