"""Model throughput, JAX against PyTorch eager with the same weights and threads.

Rows, at 32, 64 and 224 px (ImageNet stem):
- ``embed``: the backbone in eval mode (running BN statistics), images -> (N, 512) features,
  jitted in JAX and under ``torch.no_grad`` in PyTorch;
- ``train``: one forward and backward pass of the backbone with batch-statistic BN and a
  scalar loss on the features (gradients of every parameter; no optimizer update);
- ``relate_all``: the relational transformer on every (test, prototype) pair, as the eval
  scores them (512 test features x 10 prototypes), against the reference module on the same
  pairs in one batch; rates are pairs per second.
GFLOP/s use nominal FLOPs (``common.resnet18_flops``, x3 for ``train``;
``common.relational_flops``) and are compared with a matmul ceiling measured in the same run,
in JAX's dtype (``--dtype``; PyTorch always runs in float32). Batches are larger on a GPU.
With several JAX devices (``--cpu_devices``, one per core by default), ``embed`` and ``train``
are also timed with the batch split over all of them (``jax_all``, ``ratio_all``), as
``NoveltyModel`` and ``python -m resend_jax.evaluate`` run.
"""

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_reference as ref
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.common import (
    ON_GPU,
    TORCH_DEVICE,
    matmul_ceiling_gflops,
    relational_flops,
    resnet18_flops,
    set_threads,
    time_interleaved,
    torch_sync,
)
from resend_jax import runtime
from resend_jax.convert_torch import convert, merge_backbone_copies
from resend_jax.models import DTYPES, ReSeND, ResNet18, build_resend
from resend_jax.train.common import data_mesh

BATCH = {32: 1024, 64: 512, 224: 256} if ON_GPU else {32: 64, 64: 64, 224: 32}
RELATE_TESTS = 4096 if ON_GPU else 512


def _models():
    """The PyTorch reference modules and the converted Flax variables (one set of weights)."""
    torch.manual_seed(0)
    torch_backbone, torch_relational = ref.ResNetFc(), ref.RelationalTransformer().eval()
    ref.randomise_batch_norm(torch_backbone, torch.Generator().manual_seed(0))
    backbone_state = {k: v.numpy() for k, v in torch_backbone.state_dict().items()}
    relational_state = {k: v.numpy() for k, v in torch_relational.state_dict().items()}
    torch_backbone, torch_relational = torch_backbone.to(TORCH_DEVICE), torch_relational.to(TORCH_DEVICE)
    variables = convert(merge_backbone_copies(backbone_state, "reference"), relational_state)
    backbone = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
    return torch_backbone, torch_relational, backbone, jax.device_put(variables, jax.devices()[0])


def _torch_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(TORCH_DEVICE)


def _placements(variables, images: np.ndarray) -> dict:
    """``{"jax": (variables, images) on one device}``, plus ``"jax_all"``: the batch split over
    every device of the process (``--cpu_devices``, when they divide it) with the variables
    replicated."""
    placed = {"jax": (jax.device_put(variables, jax.devices()[0]), jax.device_put(images, jax.devices()[0]))}
    if jax.device_count() > 1 and len(images) % jax.device_count() == 0:
        mesh = data_mesh()
        placed["jax_all"] = (
            jax.device_put(variables, NamedSharding(mesh, PartitionSpec())),
            jax.device_put(images, NamedSharding(mesh, PartitionSpec("data"))),
        )
    return placed


def _embed_fns(module, variables, torch_model, images) -> dict:
    embed = runtime.jit(lambda v, x: module.apply(v, x))
    x_torch = _torch_images(images)

    def run_torch():
        torch_model.eval()
        with torch.no_grad():
            torch_sync(torch_model(x_torch))

    fns = {
        name: partial(lambda v, x: embed(v, x).block_until_ready(), *placed)
        for name, placed in _placements(variables, images).items()
    }
    return {**fns, "torch": run_torch}


def _train_fns(module, variables, torch_model, images) -> dict:
    def loss(params, batch_stats, x):
        features, updates = module.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(features)), updates["batch_stats"]

    step = runtime.jit(jax.grad(loss, has_aux=True))
    x_torch = _torch_images(images)

    def run_torch():
        torch_model.train()
        torch_model.zero_grad(set_to_none=True)
        torch_model(x_torch).square().mean().backward()
        torch_sync()

    fns = {
        name: partial(lambda v, x: jax.block_until_ready(step(v["params"], v["batch_stats"], x)), *placed)
        for name, placed in _placements(variables, images).items()
    }
    return {**fns, "torch": run_torch}


def _relate_row(
    torch_relational, variables, dtype: str, ceiling: float, repeats: int, prototypes: int = 10
) -> dict:
    tests = RELATE_TESTS  # test features, each against every prototype
    rng = np.random.default_rng(0)
    features = rng.standard_normal((tests, 512), np.float32)
    protos = rng.standard_normal((prototypes, 512), np.float32)
    module = build_resend({"dtype": dtype})
    relate_all = runtime.jit(lambda v, f, p: module.apply(v, f, p, method=ReSeND.relate_all))
    f_jax, p_jax = jnp.asarray(features), jnp.asarray(protos)
    pairs = torch.cat(
        [
            torch.from_numpy(features).repeat_interleave(prototypes, 0),
            torch.from_numpy(protos).repeat(tests, 1),
        ],
        1,
    ).to(TORCH_DEVICE)

    def run_torch():
        with torch.no_grad():
            torch_sync(torch_relational(pairs))

    seconds = time_interleaved(
        {"jax": lambda: relate_all(variables, f_jax, p_jax).block_until_ready(), "torch": run_torch}, repeats
    )
    n = tests * prototypes
    return _row("relate_all", 0, n, relational_flops(n), seconds, ceiling, "pairs")


def _row(
    task: str, size: int, batch: int, flops: float, seconds: dict, ceiling: float, unit: str = "img"
) -> dict:
    row = {
        "task": task,
        "size": size,
        "batch": batch,
        f"jax_{unit}_s": batch / seconds["jax"],
        f"torch_{unit}_s": batch / seconds["torch"],
        "ratio": seconds["torch"] / seconds["jax"],
        "jax_gflop_s": flops / seconds["jax"] / 1e9,
        "torch_gflop_s": flops / seconds["torch"] / 1e9,
        "ceiling_gflop_s": ceiling,
        "jax_pct_ceiling": 100 * flops / seconds["jax"] / 1e9 / ceiling,
    }
    if "jax_all" in seconds:  # the same work data-parallel over every device of the process
        row |= {
            "devices": jax.device_count(),
            f"jax_all_{unit}_s": batch / seconds["jax_all"],
            "ratio_all": seconds["torch"] / seconds["jax_all"],
            "jax_all_pct_ceiling": 100 * flops / seconds["jax_all"] / 1e9 / ceiling,
        }
    return row | {"load_1min": os.getloadavg()[0]}  # other processes; PyTorch's OpenMP suffers most


def run(args) -> list[dict]:
    set_threads()
    repeats = 3 if args.quick else 7
    sizes = (32, 64) if args.quick else (32, 64, 224)
    torch_model, torch_relational, variables, resend_variables = _models()
    module = ResNet18(dtype=DTYPES[args.dtype])
    ceiling = matmul_ceiling_gflops(args.dtype, repeats=3)["ceiling"]
    rows = []
    for size in sizes:
        batch = BATCH[size]
        images = np.random.default_rng(size).standard_normal((batch, size, size, 3), np.float32)
        for task, make, flops_factor in (("embed", _embed_fns, 1), ("train", _train_fns, 3)):
            seconds = time_interleaved(make(module, variables, torch_model, images), repeats)
            rows.append(
                _row(task, size, batch, flops_factor * batch * resnet18_flops(size), seconds, ceiling)
            )
    rows.append(_relate_row(torch_relational, resend_variables, args.dtype, ceiling, repeats))
    return rows
