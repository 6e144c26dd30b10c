"""ReSeND train step, JAX against PyTorch, each in its own process, on 1 JAX device and on ``--cpu_devices``.

One row per (image size, JAX device count): pairs per second and step time of
``resend_jax.train.resend.train_step`` (jitted, batch sharded over a ``data`` mesh, state
donated, torchlars LARS) and of the reference step in PyTorch (``tests/torch_reference``
modules: both images through the backbone in one batch, the relational module, MSE on
``2 * sigmoid(10 * logit) - 1``, LARS-preconditioned SGD). With ``--torch-compile`` the forward
pass and loss are one compiled function under autocast (its backward compiled with it), and
the LARS preconditioning and the SGD update another (``common.TorchMode``).

Each round runs a JAX process per device count (1, and one device per core or
``--cpu_devices``: the count is fixed when JAX starts), then one PyTorch process
(``common.run_rounds``); each times every size, median of ``repeats`` steps after
``common.WARMUP``. ``ratio`` is the median over rounds of PyTorch's step time / JAX's in the
same round, ``ratio_min`` and ``ratio_max`` its extremes. On a GPU machine there is one JAX
device and more pairs per step.
"""

from functools import partial

import jax
import numpy as np
import torch
import torch_reference as ref
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from benchmarks.common import (
    ON_GPU,
    TORCH_DEVICE,
    TorchMode,
    child_main,
    matmul_ceiling_gflops,
    paired,
    relational_flops,
    resnet18_flops,
    run_rounds,
    time_calls,
    torch_sync,
)
from resend_jax.models import build_resend
from resend_jax.train import common
from resend_jax.train.optim import build_optimizer, learning_rate_schedule
from resend_jax.train.resend import image_pair_logits, initial_state, train_step

SIZES = {32: 64, 64: 32, 224: 8}  # image size -> pairs per step on the CPU
GPU_SIZES = {32: 512, 64: 256, 224: 128}
LR = 0.008  # of the timed steps (their cost does not depend on it)


def run(args) -> list[dict]:
    config = {
        "dtype": args.dtype,
        "torch_compile": args.torch_compile,
        "repeats": 3 if args.quick else 7,
        "sizes": [[size, pairs] for size, pairs in (GPU_SIZES if ON_GPU else SIZES).items()],
    }
    device_counts = (1,) if ON_GPU else sorted({1, len(jax.devices("cpu"))})  # bench.py's --cpu_devices
    return measure_rounds(config, rounds=2 if args.quick else 3, device_counts=device_counts)


def measure_rounds(config: dict, rounds: int, device_counts: tuple[int, ...]) -> list[dict]:
    """The table: ``rounds`` rounds of a JAX process per device count and a PyTorch process.

    ``config``: ``dtype``, ``torch_compile``, ``repeats`` and ``sizes`` ([px, pairs] pairs).
    """
    children = {f"jax_{n}": ("jax", n) for n in device_counts} | {"torch": ("torch", 1)}
    runs = run_rounds("train", children, config, rounds)
    torch_runs = runs.pop("torch")
    torch_ceiling = float(np.median([r["matmul_gflop_s"] for r in torch_runs]))
    load = max(r["load_1min"] for framework in (*runs.values(), torch_runs) for r in framework)
    rows = []
    for size, pairs in config["sizes"]:
        key = str(size)
        torch_s = [r["steps"][key]["seconds"] for r in torch_runs]
        for devices, jax_runs in zip(device_counts, runs.values(), strict=True):
            jax_s = [r["steps"][key]["seconds"] for r in jax_runs]
            jax_median, torch_median = float(np.median(jax_s)), float(np.median(torch_s))
            rows.append(
                {
                    "px": size,
                    "dtype": config["dtype"],
                    "devices": devices,
                    "pairs": pairs,
                    "jax_step_s": jax_median,
                    "torch_step_s": torch_median,
                    "jax_pairs_s": pairs / jax_median,
                    "torch_pairs_s": pairs / torch_median,
                    **paired(jax_s, torch_s),
                    "jax_gflops": _flops(size, pairs) / jax_median / 1e9,
                    "ceiling_gflops": max(
                        torch_ceiling, float(np.median([r["matmul_gflop_s"] for r in jax_runs]))
                    ),
                    "jax_compile_s": jax_runs[0]["steps"][key]["compile_s"],  # round 1
                    "torch_compile_s": torch_runs[0]["steps"][key]["compile_s"],
                    "rounds": rounds,
                    "load_1min": load,  # the highest the processes saw
                }
            )
    return rows


def _flops(size: int, pairs: int) -> float:
    """Forward and backward (x3) of the backbone on both images and of the relational module."""
    return 3 * (2 * pairs * resnet18_flops(size) + relational_flops(pairs))


def measure(framework: str, config: dict) -> dict:
    """One process's step times at every size, and its framework's matmul GFLOP/s (``child_main``)."""
    mode = TorchMode(config["torch_compile"], config["dtype"])
    steps = {}
    for size, pairs in config["sizes"]:
        targets = (np.random.default_rng(1).random(pairs) < 0.5).astype(np.float32)
        if framework == "jax":
            step = _jax_step(size, pairs, config["dtype"], targets)
        else:
            step = _torch_step(size, pairs, targets, mode)
        steps[str(size)] = time_calls({framework: step}, config["repeats"])[framework]
    dtype = config["dtype"] if framework == "jax" else mode.compute_dtype
    gflops = matmul_ceiling_gflops(dtype, repeats=3, frameworks=(framework,))[framework]
    return {"steps": steps, "matmul_gflop_s": gflops}


def _jax_step(size: int, pairs: int, dtype: str, targets: np.ndarray):
    """A blocking call of the jitted ReSeND train step on a fixed random batch."""
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
            schedule=learning_rate_schedule(config),
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


def _torch_step(size: int, pairs: int, targets: np.ndarray, mode: TorchMode):
    """A blocking call of the reference step (torchlars' LARS around SGD), run as ``mode`` says."""
    backbone = mode.prepare(ref.ResNetFc().train())
    relational = mode.prepare(ref.RelationalTransformer().train())
    fc = set(backbone.model_resnet.fc.parameters())  # unused, as in the reference
    parameters = [p for p in [*backbone.model_resnet.parameters(), *relational.parameters()] if p not in fc]
    sgd = torch.optim.SGD(parameters, lr=LR, momentum=0.9)
    images_a = mode.images(torch.randn(pairs, 3, size, size))
    images_b = mode.images(torch.randn(pairs, 3, size, size))
    targets = torch.from_numpy(targets).to(TORCH_DEVICE)

    @mode.compiled
    def forward_loss(images_a, images_b, targets):
        features = backbone(torch.cat((images_a, images_b))).float()
        logits = relational(torch.cat(features.chunk(2), 1))[:, 0].float()
        return ((2 * torch.sigmoid(10 * logits) - 1 - (2 * targets - 1)) ** 2).mean()

    @mode.compiled
    def update():
        lars_precondition_(parameters, branch_free=mode.compile)
        sgd.step()

    def torch_step():
        sgd.zero_grad()
        with mode.autocast():
            loss = forward_loss(images_a, images_b, targets)
        loss.backward()
        update()
        torch_sync()

    return torch_step


@torch.no_grad()
def lars_precondition_(parameters: list[torch.nn.Parameter], branch_free: bool = False) -> None:
    """torchlars' preconditioning of every gradient, in place, as the reference step does it.

    ``branch_free``: the same without the test of both norms on the host, which would split a
    compiled graph at every parameter.
    """
    for p in parameters:
        w_norm, g_norm = p.norm(), p.grad.norm()
        if branch_free:
            scaled = (p.grad + 5e-4 * p) * (0.001 * w_norm / (g_norm + 5e-4 * w_norm + 1e-8))
            p.grad.copy_(torch.where((w_norm > 0) & (g_norm > 0), scaled, p.grad))
        elif w_norm > 0 and g_norm > 0:
            p.grad.add_(p, alpha=5e-4).mul_(0.001 * w_norm / (g_norm + 5e-4 * w_norm + 1e-8))


if __name__ == "__main__":
    child_main(measure)
