"""Model throughput, JAX against PyTorch eager with the same weights and threads.

Rows, at 32, 64 and 224 px (ImageNet stem):
- ``embed``: the backbone in eval mode (running BN statistics), images -> (N, 512) features,
  jitted in JAX and under ``torch.no_grad`` in PyTorch;
- ``train``: one forward and backward pass of the backbone with batch-statistic BN and a
  scalar loss on the features (gradients of every parameter; no optimizer update).
GFLOP/s use the nominal convolution FLOPs of ``common.resnet18_flops`` (x3 for ``train``) and
are compared with a matmul ceiling measured in the same run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_reference as ref

from benchmarks.common import matmul_ceiling_gflops, resnet18_flops, set_threads, time_interleaved
from resend_jax.convert_torch import convert, merge_backbone_copies
from resend_jax.models import ResNet18

BATCH = {32: 64, 64: 64, 224: 32}


def _models():
    """The PyTorch reference backbone and its converted Flax variables (one set of weights)."""
    torch.manual_seed(0)
    torch_model = ref.ResNetFc()
    ref.randomise_batch_norm(torch_model, torch.Generator().manual_seed(0))
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = convert(merge_backbone_copies(state, "reference"), None)
    backbone = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
    return torch_model, jax.device_put(backbone)


def _embed_fns(module, variables, torch_model, images):
    embed = jax.jit(lambda v, x: module.apply(v, x))
    x_jax, x_torch = jnp.asarray(images), torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def run_torch():
        torch_model.eval()
        with torch.no_grad():
            torch_model(x_torch)

    return lambda: embed(variables, x_jax).block_until_ready(), run_torch


def _train_fns(module, variables, torch_model, images):
    def loss(params, batch_stats, x):
        features, updates = module.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(features)), updates["batch_stats"]

    step = jax.jit(jax.grad(loss, has_aux=True))
    x_jax, x_torch = jnp.asarray(images), torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    params, stats = variables["params"], variables["batch_stats"]

    def run_torch():
        torch_model.train()
        torch_model.zero_grad(set_to_none=True)
        torch_model(x_torch).square().mean().backward()

    return lambda: jax.block_until_ready(step(params, stats, x_jax)), run_torch


def run(args) -> list[dict]:
    set_threads()
    repeats = 3 if args.quick else 7
    sizes = (32, 64) if args.quick else (32, 64, 224)
    torch_model, variables = _models()
    module = ResNet18()
    rows = []
    for size in sizes:
        batch = BATCH[size]
        images = np.random.default_rng(size).standard_normal((batch, size, size, 3), np.float32)
        for task, make, flops_factor in (("embed", _embed_fns, 1), ("train", _train_fns, 3)):
            run_jax, run_torch = make(module, variables, torch_model, images)
            seconds = time_interleaved({"jax": run_jax, "torch": run_torch}, repeats)
            ceiling = matmul_ceiling_gflops(repeats=3)["ceiling"]
            flops = flops_factor * batch * resnet18_flops(size)
            rows.append(
                {
                    "task": task,
                    "size": size,
                    "batch": batch,
                    "jax_img_s": batch / seconds["jax"],
                    "torch_img_s": batch / seconds["torch"],
                    "ratio": seconds["torch"] / seconds["jax"],
                    "jax_gflop_s": flops / seconds["jax"] / 1e9,
                    "torch_gflop_s": flops / seconds["torch"] / 1e9,
                    "ceiling_gflop_s": ceiling,
                    "jax_pct_ceiling": 100 * flops / seconds["jax"] / 1e9 / ceiling,
                }
            )
    return rows
