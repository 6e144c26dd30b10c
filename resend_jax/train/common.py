"""Machinery every trainer shares: hosts and mesh, checkpoints with resume, logging, preemption.

A workdir ``W`` holds ``config.json`` (the resolved config), ``model.json`` (what
``resend_jax.load_model(W)`` needs), ``metrics.jsonl`` (one line per logged step), optional
TensorBoard event files, and ``checkpoints/<step>/`` with the items ``model``
(``{"params", "batch_stats"}``), ``train`` (optimizer state, step, rng) and ``data`` (the grain
iterator).
"""

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from tqdm import tqdm

from resend_jax import checkpoint, runtime

Pytree = Any


def maybe_initialize_distributed(config: ConfigDict) -> None:
    """``jax.distributed.initialize()`` when the config or the environment asks for several hosts.

    The environment asks with ``JAX_COORDINATOR_ADDRESS`` (plus ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``), or with what ``jax.distributed`` detects on its own (TPU pods, SLURM)
    when ``config.distributed`` is True.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (config.get("distributed", False) or address):
        return
    if jax.distributed.is_initialized():
        return
    # Collectives between CPU devices of different processes (harmless on accelerators).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if address:
        kwargs = {
            "coordinator_address": address,
            "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["JAX_PROCESS_ID"]),
        }
    jax.distributed.initialize(**kwargs)


def data_mesh() -> Mesh:
    """A 1-d mesh over every device of every host, axis ``data``."""
    return Mesh(np.array(jax.devices()), ("data",))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-host numpy batches -> global arrays sharded over ``data`` (hosts in process order)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def per_host_batch_size(global_batch_size: int) -> int:
    devices = jax.device_count()
    if global_batch_size % devices:
        raise ValueError(f"config.batch_size={global_batch_size} must be divisible by the {devices} devices")
    return global_batch_size // jax.process_count()


def save_config(config: ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


MODEL_KEYS = ("params", "batch_stats")


class Checkpointer:
    """Orbax checkpoints of a train state (and a grain iterator) in ``W/checkpoints``, async.

    A state is a dict with at least ``step``; ``params`` and ``batch_stats`` form the ``model``
    item that ``load_model`` reads, every other key (``opt``, ``step``, ``rng``, ...) the
    ``train`` item, and the data iterator, when given, the ``data`` item.
    """

    def __init__(self, workdir: Path, keep: int = 3):
        self.manager = checkpoint.checkpoint_manager(
            workdir, max_to_keep=keep, enable_async_checkpointing=True
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: Pytree, data_iterator: Any = None, force: bool = False) -> None:
        model, train = _split(state)
        items = {"model": ocp.args.StandardSave(model), "train": ocp.args.StandardSave(train)}
        if data_iterator is not None:
            items["data"] = _grain_save(data_iterator)
        self.manager.save(int(state["step"]), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Pytree, data_iterator: Any = None) -> Pytree:
        """The latest checkpoint onto ``abstract_state``'s structure and shardings."""
        model, train = _split(abstract_state)
        items = {"model": ocp.args.StandardRestore(model), "train": ocp.args.StandardRestore(train)}
        if data_iterator is not None:
            items["data"] = _grain_restore(data_iterator)
        restored = self.manager.restore(self.manager.latest_step(), args=ocp.args.Composite(**items))
        return {**restored["model"], **restored["train"]}

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _split(state: Pytree) -> tuple[Pytree, Pytree]:
    model = {k: v for k, v in state.items() if k in MODEL_KEYS}
    return model, {k: v for k, v in state.items() if k not in MODEL_KEYS}


def _grain_save(iterator):
    import grain

    return grain.checkpoint.CheckpointSave(iterator)


def _grain_restore(iterator):
    import grain

    return grain.checkpoint.CheckpointRestore(iterator)


class MetricLogger:
    """Progress bar on a terminal (plain lines otherwise), ``metrics.jsonl``, TensorBoard if present."""

    def __init__(self, workdir: Path, total_steps: int, initial_step: int, desc: str = "train"):
        self.is_main = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps, initial=initial_step, desc=desc, disable=not (self.is_main and interactive)
        )
        self.plain = self.is_main and not interactive
        self.tensorboard = _tensorboard_writer(workdir) if self.is_main else None

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self.bar.set_postfix_str(summary, refresh=True)
        if self.plain:
            print(f"step {step}: {summary}", flush=True)
        if self.tensorboard is not None:
            for k, v in metrics.items():
                self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(workdir: Path):
    """A TensorBoard SummaryWriter from tensorboardX or torch, if either is installed."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            writer_class = __import__(module, fromlist=["SummaryWriter"]).SummaryWriter
        except ImportError:
            continue
        return writer_class(str(workdir / "tensorboard"))
    logging.info("no TensorBoard writer installed (tensorboardX or tensorboard): metrics.jsonl only")
    return None


class Preemption:
    """Turns SIGTERM into a flag that the training loop polls between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def jit_train_step(step_fn: Callable[[Pytree, dict], tuple[Pytree, dict]], mesh: Mesh):
    """``step_fn(state, batch)`` jitted with the batch sharded over ``data``, the state replicated
    and donated, and the metrics replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return runtime.jit(
        step_fn,
        in_shardings=(replicated, NamedSharding(mesh, PartitionSpec("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def init_or_restore(
    checkpointer: Checkpointer,
    init: Callable[[Pytree | None], Pytree],
    pretrained: Callable[[], Pytree | None],
    data_iterator: Any,
    sharding: NamedSharding,
) -> Pytree:
    """The latest checkpoint (state and data iterator), else ``init(pretrained())``, jitted.

    ``init`` builds the state from optional pretrained variables (``None``: fresh init);
    ``pretrained`` is only called for a new run, outside jit (orbax needs concrete arrays).
    """
    if checkpointer.latest_step() is None:
        return jax.jit(init, out_shardings=sharding)(pretrained())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init, None)
    )
    state = checkpointer.restore(abstract, data_iterator)
    logging.info("resumed from step %d in %s", int(state["step"]), checkpointer.manager.directory)
    return state


def train_loop(
    config: ConfigDict,
    workdir: Path,
    init: Callable[[Pytree | None], Pytree],
    pretrained: Callable[[], Pytree | None],
    step_fn: Callable[[Pytree, dict], tuple[Pytree, dict]],
    data_iterator: Any,
    mesh: Mesh,
    rate_name: str,
    desc: str,
) -> tuple[Pytree, bool]:
    """Resumes or starts a run (``init_or_restore``), then steps to ``config.total_steps`` with
    ``jit_train_step(step_fn)``, logging, checkpoints, SIGTERM and the NaN stop.

    Logs every ``config.log_every`` steps (plus ``rate_name``: ``config.batch_size`` items per
    second), checkpoints every ``config.checkpoint_every`` steps and at the end. Returns the
    state and whether the run finished (False after SIGTERM, which saves and stops).
    """
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = init_or_restore(checkpointer, init, pretrained, data_iterator, replicated)
    step_fn = jit_train_step(step_fn, mesh)
    step = int(state["step"])
    logger = MetricLogger(workdir, config.total_steps, step, desc=desc)
    preemption = Preemption()
    window_start, window_steps = time.perf_counter(), 0
    try:
        while step < config.total_steps:
            state, metrics = step_fn(state, global_batch(next(data_iterator), mesh))
            step += 1
            window_steps += 1
            check_finite(float(metrics["loss"]), step, checkpointer)
            logger.advance()
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                metrics[rate_name] = window_steps * config.batch_size / (time.perf_counter() - window_start)
                logger.write(step, metrics)
                window_start, window_steps = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpointer.save(state, data_iterator, force=step == config.total_steps)
            if preemption.requested:
                checkpointer.save(state, data_iterator, force=True)
                logging.warning("SIGTERM: saved step %d to %s; rerun to resume", step, workdir)
                return state, False
    finally:
        checkpointer.close()
        logger.close()
        preemption.restore()
    return state, True


def check_finite(loss: float, step: int, checkpointer: Checkpointer) -> None:
    if not np.isfinite(loss):
        checkpointer.wait()
        raise FloatingPointError(
            f"loss is {loss} at step {step}: training stopped. The last good checkpoint is step "
            f"{checkpointer.latest_step()} in {checkpointer.manager.directory}; lower config.lr or "
            "check the data, then rerun the same command to resume from it."
        )
