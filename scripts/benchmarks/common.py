"""Timing, threads, benchmark processes, a measured matmul ceiling and FLOP counts, shared.

The model and train benchmarks time each framework in a process of its own (``run_rounds``):
in one process their thread pools slow each other down (docs/cpu_performance.md). A round runs
one JAX process then one PyTorch process, never both at once; a row's ratio is the median of the
rounds' paired ratios (``paired``), each comparing two processes close in time.
The eval benchmark still alternates both frameworks in one process (``time_interleaved``).
On a machine with a CUDA GPU both frameworks run there (``TORCH_DEVICE``) and each timed PyTorch
call ends with ``torch_sync``. PyTorch runs as ``TorchMode`` says: the float32 eager reference,
or compiled, channels_last and autocast to JAX's dtype (``--torch-compile``).
"""

import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

from resend_jax.models import DTYPES

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, stride of the first block)
TORCH_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = TORCH_DEVICE.type == "cuda"
WARMUP = 3  # calls before timing: compilation, and a compiled optimizer's second trace
SCRIPTS = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    """A benchmark process failed; the message says which and how to rerun it alone."""


class TorchMode(NamedTuple):
    """How PyTorch runs: the float32 eager reference, or as its best users write it.

    With ``compile``: ``torch.compile`` (inductor, default mode, static shapes), the model and
    its images in channels_last, and the forward pass under ``torch.autocast`` to ``dtype``
    when that is bfloat16 (JAX's ``--dtype``; float32 runs without autocast).
    """

    compile: bool = False
    dtype: str = "float32"

    @property
    def compute_dtype(self) -> str:
        return self.dtype if self.compile else "float32"

    def describe(self) -> str:
        if not self.compile:
            return "PyTorch eager in float32"
        autocast = ", autocast to bfloat16" if self.compute_dtype == "bfloat16" else " in float32"
        return f"PyTorch torch.compile (inductor), channels_last{autocast}"

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on ``TORCH_DEVICE``, in channels_last when compiling (not compiled yet)."""
        module = module.to(TORCH_DEVICE)
        return module.to(memory_format=torch.channels_last) if self.compile else module

    def compiled(self, fn: Callable) -> Callable:
        """``torch.compile(fn)`` when compiling, else ``fn``; a module stays a module."""
        return torch.compile(fn, dynamic=False) if self.compile else fn

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """NCHW ``images`` on ``TORCH_DEVICE``, channels_last when compiling."""
        images = images.to(TORCH_DEVICE)
        return images.contiguous(memory_format=torch.channels_last) if self.compile else images

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast to bfloat16, or nothing."""
        if self.compute_dtype == "bfloat16":
            return torch.autocast(TORCH_DEVICE.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


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


def time_calls(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = WARMUP) -> dict:
    """Per blocking function, ``seconds`` and ``compile_s``.

    ``seconds``: the median of ``repeats`` calls, timed in alternating rounds after ``warmup``
    calls of each; ``compile_s``: how much longer the warm-up took than as many timed calls
    (compilation, mostly).
    """
    warmup_s = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        warmup_s[name] = time.perf_counter() - start
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {
        name: {"seconds": s, "compile_s": max(0.0, warmup_s[name] - warmup * s)}
        for name, s in medians.items()
    }


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict:
    """Median seconds of each blocking function, timed in alternating rounds after warm-up."""
    return {name: timed["seconds"] for name, timed in time_calls(fns, repeats, warmup).items()}


def matmul_ceiling_gflops(
    dtype: str = "float32", repeats: int = 10, frameworks: Iterable[str] = ("jax", "torch")
) -> dict:
    """GFLOP/s of a square ``dtype`` matmul in each of ``frameworks``; ``ceiling`` is the largest.

    2048 on the CPU, 8192 on a GPU. Each framework uses its default precision for float32
    (on recent NVIDIA GPUs XLA allows TF32, PyTorch's matmul does not). A framework left out
    is not touched, so a PyTorch process does not start JAX's backend.
    """
    n = 8192 if ON_GPU else 2048
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    fns = {}
    if "jax" in frameworks:
        a_jax = jnp.asarray(a, DTYPES[dtype])
        matmul = jax.jit(lambda x: x @ x)
        fns["jax"] = lambda: matmul(a_jax).block_until_ready()
    if "torch" in frameworks:
        a_torch = torch.from_numpy(a).to(TORCH_DEVICE, getattr(torch, dtype))
        fns["torch"] = lambda: torch_sync(a_torch @ a_torch)
    gflops = {name: 2 * n**3 / s / 1e9 for name, s in time_interleaved(fns, repeats).items()}
    return {**gflops, "ceiling": max(gflops.values())}


def run_rounds(
    benchmark: str, children: Mapping[str, tuple[str, int]], config: dict, rounds: int
) -> dict[str, list[dict]]:
    """Runs ``benchmarks.<benchmark>``'s ``measure`` in a fresh process per child, ``rounds`` times.

    ``children`` maps a name to (framework, JAX CPU devices); a round runs them one at a time,
    in that order. Returns each child's results, one per round. Both frameworks keep what they
    compile in fresh on-disk caches (JAX's compilation cache, inductor's; unless the environment
    names its own), so round 1 compiles from scratch and later rounds mostly load.
    """
    results = {name: [] for name in children}
    with tempfile.TemporaryDirectory(prefix="resend-bench-") as caches:
        path = [str(SCRIPTS), str(SCRIPTS.parent / "tests"), os.environ.get("PYTHONPATH", "")]
        env = {"JAX_COMPILATION_CACHE_DIR": f"{caches}/jax", "TORCHINDUCTOR_CACHE_DIR": f"{caches}/inductor"}
        env |= {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        for _ in range(rounds):
            for name, (framework, devices) in children.items():
                results[name].append(_child(benchmark, framework, devices, config, env))
    return results


def _child(benchmark: str, framework: str, devices: int, config: dict, env: dict) -> dict:
    arguments = ["-m", f"benchmarks.{benchmark}", framework, json.dumps(config)]
    env = env | {"JAX_NUM_CPU_DEVICES": str(devices)}
    result = subprocess.run(
        [sys.executable, *arguments], env=env, capture_output=True, text=True, check=False
    )
    try:
        output = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        output = {"error": (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]}
    if result.returncode == 0 and "error" not in output:
        return output
    hint = ""
    if framework == "torch" and config.get("torch_compile"):
        hint = (
            "torch.compile's inductor builds C++ kernels on a CPU (it needs g++ and Python's headers); "
            "without --torch-compile PyTorch runs eager.\n"
        )
    rerun = f"PYTHONPATH=scripts:tests JAX_NUM_CPU_DEVICES={devices} python {shlex.join(arguments)}"
    raise ChildFailed(
        f"the {benchmark} benchmark's {framework} process failed: {output.get('error')}\n{hint}"
        f"To see the traceback, rerun it alone: {rerun}"
    )


def child_main(measure: Callable[[str, dict], dict]) -> None:
    """A benchmark process: ``python -m benchmarks.<name> FRAMEWORK CONFIG_JSON``.

    Pins the threads, runs ``measure(framework, config)`` and prints its result, with the load
    average, as JSON on the last line of stdout; on an exception, ``{"error"}`` there (a few
    lines) and the traceback on stderr.
    """
    framework, config = sys.argv[1], json.loads(sys.argv[2])
    set_threads()
    try:
        result = measure(framework, config)
    except Exception as error:
        traceback.print_exc()
        lines = f"{type(error).__name__}: {error}".strip().splitlines()
        result = {"error": "\n".join(lines[:8])[:2000]}
    print(json.dumps(result | {"load_1min": os.getloadavg()[0]}))
    sys.exit(1 if "error" in result else 0)


def paired(jax_seconds: Sequence[float], torch_seconds: Sequence[float], name: str = "ratio") -> dict:
    """PyTorch time / JAX time round by round: the median as ``name``, ``name_min``, ``name_max``."""
    ratios = [t / j for j, t in zip(jax_seconds, torch_seconds, strict=True)]
    return {name: float(np.median(ratios)), f"{name}_min": min(ratios), f"{name}_max": max(ratios)}


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
