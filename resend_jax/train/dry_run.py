"""``python -m resend_jax.train --config C --workdir W --dry_run``: plan a ReSeND run before booking it.

Compiles the real train step (``common.jit_train_step`` over every device of the current mesh)
for the configured global batch from abstract inputs, reads no data and writes nothing but
``W/dry_run.json``, and reports per device: the compiled step's memory (arguments, outputs,
temporaries; XLA's ``memory_analysis``), its FLOPs (``cost_analysis``, summed over devices),
the parameter and optimizer-state bytes, and the images per second each host's input pipeline
must deliver for a step time of ``config.dry_run_step_s`` seconds. When that is 0 the step time
is measured: a few steps of ``dry_run_measure_batch`` images on one device of this machine,
scaled linearly to the per-device batch (an estimate; the compiled step is not run).
"""

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from resend_jax.data import protocols
from resend_jax.train import common
from resend_jax.train.resend import check_options, device_augmentation, step_and_init

Pytree = Any


def abstract_batch(config: ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of a global batch of ``config.data.partners`` (``training_data``'s)."""
    size = config.data.image_size
    dtype = jnp.uint8 if device_augmentation(config) else jnp.float32  # crops the step augments
    if config.data.partners == "images":
        image = jax.ShapeDtypeStruct((batch_size, size, size, 3), dtype)
        return {
            "image_a": image,
            "image_b": image,
            "target": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        }
    return {
        "images": jax.ShapeDtypeStruct((batch_size, 1, size, size, 3), dtype),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }


def images_per_step(config: ConfigDict) -> int:
    """Decoded and augmented images per step: two per pair, or one per batch_prototypes item."""
    return config.batch_size * (2 if config.data.partners == "images" else 1)


def step_function(config: ConfigDict):
    """``(step_fn, init)`` of the ReSeND trainer for ``config``, without opening any data."""
    check_options(config)
    num_classes = len(protocols.parse_classes(str(config.data.known_classes)))
    if config.data.partners == "batch_prototypes" and not num_classes:
        raise ValueError("--dry_run with data.partners=batch_prototypes needs config.data.known_classes")
    step_fn, init, _ = step_and_init(config, num_classes)
    return step_fn, init


def tree_bytes(tree: Pytree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def compile_step(step_fn, init, batch: dict[str, jax.ShapeDtypeStruct], mesh: Mesh):
    """The train step compiled for abstract (sharded) state and batch; also returns the state."""
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), jax.eval_shape(init, None)
    )
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded) for k, v in batch.items()}
    return common.jit_train_step(step_fn, mesh).lower(state, batch).compile(), state


def measure_step_s(config: ConfigDict, step_fn, init, per_device_images: int) -> float:
    """Seconds per step at ``per_device_images`` images on one device, scaled from a small batch."""
    device = jax.devices()[0]
    mesh = Mesh(np.array([device]), ("data",))
    items = config.dry_run_measure_batch // (2 if config.data.partners == "images" else 1)
    compiled, _ = compile_step(step_fn, init, abstract_batch(config, max(items, 1)), mesh)
    state = jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(None)
    batch = {
        k: jnp.zeros(v.shape, v.dtype) if k != "label" else jnp.arange(v.shape[0], dtype=v.dtype) % 2
        for k, v in abstract_batch(config, max(items, 1)).items()
    }
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        timings.append(time.perf_counter() - start)
    measured_images = max(items, 1) * (2 if config.data.partners == "images" else 1)
    return float(np.median(timings)) * per_device_images / measured_images


def plan(config: ConfigDict) -> dict[str, Any]:
    """Compiles the step on the current mesh and returns the report's numbers (bytes, FLOPs, rates)."""
    mesh = common.data_mesh()
    devices, hosts = jax.device_count(), jax.process_count()
    if config.batch_size % devices:
        raise ValueError(f"config.batch_size = {config.batch_size} is not divisible by the {devices} devices")
    step_fn, init = step_function(config)
    start = time.perf_counter()
    compiled, state = compile_step(step_fn, init, abstract_batch(config, config.batch_size), mesh)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    per_device_images = images_per_step(config) // devices
    step_s = config.dry_run_step_s or measure_step_s(config, step_fn, init, per_device_images)
    return {
        "devices": devices,
        "hosts": hosts,
        "device_kind": jax.devices()[0].device_kind,
        "global_batch": config.batch_size,
        "images_per_step": images_per_step(config),
        "image_size": config.data.image_size,
        "dtype": config.model.dtype,
        "compile_s": compile_s,
        "per_device_bytes": {
            "arguments": int(memory.argument_size_in_bytes),
            "outputs": int(memory.output_size_in_bytes),
            "temporaries": int(memory.temp_size_in_bytes),
            "aliased": int(memory.alias_size_in_bytes),
            "generated_code": int(memory.generated_code_size_in_bytes),
        },
        "params_bytes": tree_bytes(state["params"]),
        "optimizer_bytes": tree_bytes(state["opt"]),
        "flops_per_step": float(cost.get("flops", float("nan"))) * devices,
        "step_s": float(step_s),
        "step_s_measured": not config.dry_run_step_s,
        "images_per_second_per_host": images_per_step(config) / step_s / hosts,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(result: dict[str, Any]) -> str:
    memory = result["per_device_bytes"]
    peak = memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
    how = "measured on this machine, scaled" if result["step_s_measured"] else "config.dry_run_step_s"
    lines = [
        f"devices: {result['devices']} x {result['device_kind']} on {result['hosts']} host(s); compiled in "
        f"{result['compile_s']:.0f} s",
        f"global batch: {result['global_batch']} ({result['images_per_step']} images of "
        f"{result['image_size']} px per step, {result['dtype']})",
        f"per device: arguments {_gib(memory['arguments'])}, outputs {_gib(memory['outputs'])} "
        f"({_gib(memory['aliased'])} aliased to arguments), temporaries {_gib(memory['temporaries'])}; "
        f"at most {_gib(peak)}",
        f"parameters {_gib(result['params_bytes'])}, optimizer state {_gib(result['optimizer_bytes'])} "
        "(replicated on every device)",
        f"FLOPs per step: {result['flops_per_step']:.3e}",
        f"step time: {result['step_s']:.3f} s ({how})",
        f"each host's input pipeline must deliver {result['images_per_second_per_host']:,.0f} images/s "
        f"({result['images_per_second_per_host'] * result['hosts'] / result['devices']:,.0f} per device)",
    ]
    return "\n".join(lines)


def dry_run(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Plans the run, prints the report and writes ``workdir/dry_run.json``."""
    if config.trainer != "resend":
        raise ValueError(f"--dry_run plans ReSeND runs (config.trainer = 'resend'), got {config.trainer!r}")
    common.maybe_initialize_distributed(config)
    result = plan(config)
    print(report(result), flush=True)
    if jax.process_index() == 0:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "dry_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
