"""Timing, thread control, a measured matmul ceiling and FLOP counts shared by the benchmarks.

Every comparison with PyTorch times both frameworks in one process, interleaved round by round,
and reports medians, so that load from other processes on a shared machine hits both alike.
On a machine with a CUDA GPU both frameworks run there (``TORCH_DEVICE``), PyTorch in float32
(the reference's precision), and each timed PyTorch call ends with ``torch_sync``.
"""

import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch

from resend_jax.models import DTYPES

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, stride of the first block)
TORCH_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = TORCH_DEVICE.type == "cuda"


def torch_sync(result: object = None) -> object:
    """Waits for PyTorch's queued GPU work (a no-op on the CPU) and passes ``result`` through."""
    if ON_GPU:
        torch.cuda.synchronize()
    return result


def set_threads(n: int | None = None) -> int:
    """Pins this process to ``n`` cores (all by default) and gives PyTorch ``n`` threads.

    XLA:CPU sizes its thread pool from the cores it may run on, so call this before JAX first
    touches its backend for the pinning to reach both frameworks.
    """
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores) if n is None else n
    os.sched_setaffinity(0, cores[:n])
    torch.set_num_threads(n)
    return n


def time_fn(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in seconds of ``fn()``, which must block until its result is ready."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict:
    """Median seconds of each blocking function, timed in alternating rounds after warm-up."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def matmul_ceiling_gflops(dtype: str = "float32", repeats: int = 10) -> dict:
    """GFLOP/s of a square ``dtype`` matmul in JAX and in PyTorch; ``ceiling`` is the larger.

    2048 on the CPU, 8192 on a GPU. Each framework uses its default precision for float32
    (on recent NVIDIA GPUs XLA allows TF32, PyTorch's matmul does not).
    """
    n = 8192 if ON_GPU else 2048
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    a_jax = jnp.asarray(a, DTYPES[dtype])
    a_torch = torch.from_numpy(a).to(TORCH_DEVICE, getattr(torch, dtype))
    matmul = jax.jit(lambda x: x @ x)
    seconds = time_interleaved(
        {"jax": lambda: matmul(a_jax).block_until_ready(), "torch": lambda: torch_sync(a_torch @ a_torch)},
        repeats,
    )
    gflops = {name: 2 * n**3 / s / 1e9 for name, s in seconds.items()}
    return {**gflops, "ceiling": max(gflops.values())}


def conv_flops(
    size: int, channels_in: int, channels_out: int, kernel: int, stride: int, padding: int
) -> tuple:
    """(FLOPs, output size) of a square convolution on one image, counting a MAC as 2."""
    out = (size + 2 * padding - kernel) // stride + 1
    return 2 * out * out * channels_out * kernel * kernel * channels_in, out


def resnet18_flops(size: int, stem: str = "imagenet") -> float:
    """Forward FLOPs of the ResNet-18 backbone for one ``size`` px image (convolutions only).

    The usual count, 3.63 GFLOP (1.81 G multiply-adds) at 224 px: every kernel tap, padding
    included, so that JAX and PyTorch are credited with the same work however they compute it.
    A training step (forward and backward) is about three times this.
    """
    if stem == "imagenet":
        total, size = conv_flops(size, 3, 64, 7, 2, 3)
        size = (size + 2 - 3) // 2 + 1  # 3x3/2 max pool
    else:
        total, size = conv_flops(size, 3, 64, 3, 1, 1)
    channels = 64
    for width, stride in STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            flops, out = conv_flops(size, channels, width, 3, s, 1)
            total += flops + conv_flops(out, width, width, 3, 1, 1)[0]
            if s != 1 or channels != width:
                total += conv_flops(size, channels, width, 1, s, 0)[0]
            size, channels = out, width
    return float(total)


def relational_flops(pairs: int, embed_dim: int = 768, depth: int = 4, mlp_ratio: int = 4) -> float:
    """Matmul FLOPs of the relational transformer on ``pairs`` token triples (projection excluded)."""
    per_token = 2 * embed_dim * embed_dim * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, fc1 + fc2
    return float(pairs * 3 * depth * per_token)


def machine() -> str:
    """One line naming the CPU, its cores and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    accelerator = f", {device.device_kind}" if device.platform == "gpu" else ""
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores{accelerator}, jax {jax.__version__} "
        f"({device.platform}), torch {torch.__version__}, {datetime.date.today()}"
    )
