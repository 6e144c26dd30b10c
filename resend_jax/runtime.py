"""How the models run on a CPU: one JAX device per core, and the XLA:CPU kernels they compile to.

Two settings, both measured in docs/cpu_performance.md:

- ``use_cpu_cores`` splits the CPU into one JAX device per core, over which ``NoveltyModel``
  shards its batches;
- ``jit`` is ``jax.jit`` with ``compiler_options()``. jaxlib 0.10's XLA:CPU sends convolutions
  (all but the smallest) to YNNPACK, whose kernel gradients are 2x to 5x slower than Eigen's on
  ResNet-18's maps (the 224 px stem: 445 against 88 ms); the options keep YNNPACK for dots and
  reductions and give convolutions back to Eigen. A ResNet-18 train pass at 224 px takes half
  the time. The numbers are the same up to float32 summation order.

Every jitted model computation of the library (training steps, embedding, scoring) goes through
``jit``. Naming ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` switches the options
off, so XLA's own default (or the user's choice) applies.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default minus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION, plus reductions: with
# convolutions on Eigen, plain XLA rewrites batch-norm sums into slow reduce-windows.
CPU_COMPILER_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def use_cpu_cores(devices: int = 0) -> int:
    """Splits JAX's CPU backend into ``devices`` devices (0: one per core); call before JAX starts.

    ``NoveltyModel`` splits every batch over all devices, so each core embeds its share. With
    ``devices=0``, a count already set in ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS`` is kept.
    Accelerators are not affected. Returns the number of CPU devices asked for (-1: left to
    JAX's setting).
    """
    if devices == 0:
        flags = os.environ.get("XLA_FLAGS", "")
        if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in flags:
            return -1
        # The cores this process may use (Linux); all of the machine's elsewhere (macOS).
        devices = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jax.config.update("jax_num_cpu_devices", devices)
    return devices


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """``CPU_COMPILER_OPTIONS`` on a CPU backend whose XLA accepts them, else ``None``.

    ``None`` on accelerators, when ``XLA_FLAGS`` names the option (the user's choice wins), and
    on jaxlib versions without it. Starts JAX's backend: call after ``use_cpu_cores``.
    """
    if jax.default_backend() != "cpu" or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except (TypeError, RuntimeError):  # this jax has no such keyword, or its XLA no such option
        return None
    return CPU_COMPILER_OPTIONS


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with ``compiler_options()``."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
