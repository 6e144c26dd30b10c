"""Machinery every trainer shares: hosts and mesh, checkpoints with resume, logging, preemption.

A workdir ``W`` holds ``config.json`` (the resolved config), ``model.json`` (what
``resend_jax.load_model(W)`` needs), ``metrics.jsonl`` (one line per logged step), optional
TensorBoard event files, ``train.lock`` (the process training in it, ``workdir_lock``) and
``checkpoints/<step>/`` with the items ``model`` (``{"params", "batch_stats"}``), ``train``
(optimizer state, step, rng) and ``data`` (the grain iterator). Checkpoints that training must
not resume from (damaged, or holding parameters whose next loss is not finite) are moved to
``bad_checkpoints/<step>-<time>/``.
"""

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
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


CONFIG_JSON = "config.json"
LOCK = "train.lock"
BAD_CHECKPOINTS = "bad_checkpoints"


def save_config(config: ConfigDict, workdir: Path, restored: bool = False) -> None:
    """Writes ``W/config.json`` for a new run (no checkpoint yet), or with ``restored`` once the
    run's state has been restored: a rerun that fails before then leaves the stored config."""
    if jax.process_index() != 0:
        return
    if not restored and ocp.utils.checkpoint_steps(workdir / checkpoint.CHECKPOINTS):
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_JSON).write_text(config.to_json_best_effort(indent=2) + "\n")


# Keys a resumed run may change: how it runs, logs, checkpoints and is evaluated at the end, and
# how long it trains; not what the steps compute.
RESUMABLE_KEYS = (
    "total_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "distributed",
    "dry_run_step_s",
    "dry_run_measure_batch",
    "data.num_workers",
    "data.data_dir",
    "data.test",
    "ood.",
    "eval.",
)


def _resumable(key: str, config: dict[str, Any]) -> bool:
    if key == "total_steps" and config.get("lr_schedule") == "cosine":
        return False  # the schedule decays to 0 at total_steps: another length is another recipe
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def resume_conflicts(config: ConfigDict, workdir: Path) -> list[str]:
    """The keys in which ``config`` differs from the config that trained ``W``'s checkpoints.

    Every key counts but ``RESUMABLE_KEYS`` (a key ending in "." names a group; ``total_steps``
    counts when the learning rate decays to 0 at it): a run resumed
    with another learning rate, image size or model would mix two recipes in one result. Keys
    that only one side has (added to or removed from the configs since) are not compared.
    Empty when ``W`` holds no checkpoint.
    """
    path = workdir / CONFIG_JSON
    if not path.is_file() or not ocp.utils.checkpoint_steps(workdir / checkpoint.CHECKPOINTS):
        return []
    stored = _flatten(json.loads(path.read_text()))
    current = _flatten(json.loads(config.to_json_best_effort()))
    return [
        f"{key}: {stored[key]!r} in {path}, {current[key]!r} now"
        for key in sorted(set(stored) & set(current))
        if stored[key] != current[key] and not _resumable(key, current)
    ]


def check_resume_config(config: ConfigDict, workdir: Path) -> None:
    """Refuses to resume checkpoints trained with another configuration (``resume_conflicts``).

    Runs before anything in ``W`` is written; the error names every differing key.
    """
    differing = resume_conflicts(config, workdir)
    if differing:
        raise ValueError(
            f"{workdir} holds checkpoints of another configuration: {'; '.join(differing)}. Rerun "
            "with the stored values, or choose a new --workdir"
        )


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class WorkdirBusyError(BlockingIOError):
    """Another process holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Holds ``W/train.lock`` (``fcntl.flock``) for a run, with ``pid <pid> on <host>`` in it.

    A second run on the same workdir fails at once naming the holder. The kernel releases the
    lock of a process that dies; the pid it left in the file is then taken over with a warning.
    Process 0 locks for every host.
    """
    if jax.process_index() != 0:
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT), "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "another process"
            raise WorkdirBusyError(
                f"{workdir} is in use by {holder} ({path}): wait for that run to end or stop it, "
                "or choose another --workdir"
            ) from None
        if stale := f.read().strip():
            logging.warning("%s: taking over the lock of %s, which ended without releasing it", path, stale)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # an empty file: no run; closing the file releases the lock


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
        self.directory = Path(self.manager.directory)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: Pytree, data_iterator: Any = None, force: bool = False) -> None:
        model, train = _split(state)
        items = {"model": ocp.args.StandardSave(model), "train": ocp.args.StandardSave(train)}
        if data_iterator is not None:
            items["data"] = _grain_save(data_iterator)
        self.manager.save(int(state["step"]), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Pytree, data_iterator: Any = None) -> Pytree:
        """The latest checkpoint that restores, onto ``abstract_state``'s structure and shardings.

        A step that does not restore (a file, an item or a manifest missing) is tried no further:
        the previous one is. Once one restores, each failed step is set aside (``set_aside``)
        with one warning naming it and its first cause. Raises ``ValueError`` with every step's
        cause when none restores.
        """
        model, train = _split(abstract_state)
        items = {"model": ocp.args.StandardRestore(model), "train": ocp.args.StandardRestore(train)}
        if data_iterator is not None:
            items["data"] = _grain_restore(data_iterator)
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as error:  # orbax, tensorstore and grain each raise their own types
                failures.append((step, checkpoint.first_cause(error)))
                continue
            for failed, cause in failures:
                moved = self.set_aside(failed)
                logging.warning(
                    "checkpoint %s does not restore (%s): resuming from step %d; moved it to %s",
                    self.directory / str(failed),
                    cause,
                    step,
                    moved,
                )
            return {**restored["model"], **restored["train"]}
        raise ValueError(
            f"no checkpoint in {self.directory} restores: "
            + "; ".join(f"step {step}: {cause}" for step, cause in failures)
        )

    def set_aside(self, step: int) -> Path:
        """Moves step ``step`` to ``W/bad_checkpoints/<step>-<time>`` and returns that path:
        training does not resume from it, and saves that step again when it gets there."""
        target = self.directory.parent / BAD_CHECKPOINTS / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            (self.directory / str(step)).rename(target)
        ocp.multihost.sync_global_processes(f"set_aside_{step}")
        self.manager.reload()
        return target

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
        if self.is_main:
            _drop_steps_after(self.path, initial_step)
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


def _drop_steps_after(path: Path, step: int) -> None:
    """Drops the lines of ``metrics.jsonl`` past ``step`` (and a half-written last line): a
    resumed run logs those steps again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        path.write_text("".join(kept))


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
    """Defers SIGTERM: a flag that the training loop polls between steps, until ``restore``."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self) -> None:
        """Puts the previous handler back and delivers to it a SIGTERM received meanwhile (by
        default the process then ends by the signal: status 143 in a shell, so a retry loop reruns)."""
        signal.signal(signal.SIGTERM, self._previous)
        if self.requested:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.raise_signal(signal.SIGTERM)


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
    """The latest checkpoint that restores (state and data iterator; ``Checkpointer.restore``),
    else ``init(pretrained())``, jitted.

    ``init`` builds the state from optional pretrained variables (``None``: fresh init);
    ``pretrained`` is only called for a new run, outside jit (orbax needs concrete arrays).
    """
    if checkpointer.latest_step() is None:
        return jax.jit(init, out_shardings=sharding)(pretrained())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init, None)
    )
    state = checkpointer.restore(abstract, data_iterator)
    logging.info("resumed from step %d in %s", int(state["step"]), checkpointer.directory)
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
    model_json: dict[str, Any] | None = None,
) -> tuple[Pytree, bool]:
    """Resumes or starts a run (``init_or_restore``), then steps to ``config.total_steps`` with
    ``jit_train_step(step_fn)``, logging, checkpoints, SIGTERM and the NaN stop.

    Holds the workdir's lock (``workdir_lock``) and refuses another configuration than the
    checkpoints' (``check_resume_config``) before touching the workdir; ``config.json``, and ``model.json``
    when ``model_json`` gives ``checkpoint.write_model_json``'s arguments, are written once the
    state is restored or initialised. Logs every ``config.log_every`` steps (plus ``rate_name``:
    ``config.batch_size`` items per second, and ``param_norm``), checkpoints every
    ``config.checkpoint_every`` steps and at the end. Returns the state and whether the run
    finished: SIGTERM saves and stops, then reaches the previous handler (``Preemption``).
    """
    preemption = Preemption()
    try:
        with workdir_lock(workdir), Checkpointer(workdir, keep=config.keep_checkpoints) as checkpointer:
            check_resume_config(config, workdir)
            replicated = NamedSharding(mesh, PartitionSpec())
            state = init_or_restore(checkpointer, init, pretrained, data_iterator, replicated)
            save_config(config, workdir, restored=True)
            if model_json is not None and jax.process_index() == 0:
                checkpoint.write_model_json(workdir, **model_json)
            step_fn = jit_train_step(_with_param_norm(step_fn), mesh)
            step = int(state["step"])
            logger = MetricLogger(workdir, config.total_steps, step, desc=desc)
            window_start, window_steps = time.perf_counter(), 0
            try:
                while step < config.total_steps:
                    state, metrics = step_fn(state, global_batch(next(data_iterator), mesh))
                    step += 1
                    window_steps += 1
                    check_finite(metrics, step, checkpointer)
                    logger.advance()
                    if step % config.log_every == 0 or step == config.total_steps:
                        metrics = jax.device_get(metrics)
                        elapsed = time.perf_counter() - window_start
                        metrics[rate_name] = window_steps * config.batch_size / elapsed
                        logger.write(step, metrics)
                        window_start, window_steps = time.perf_counter(), 0
                    if step % config.checkpoint_every == 0 or step == config.total_steps:
                        checkpointer.save(state, data_iterator, force=step == config.total_steps)
                    if preemption.requested:
                        checkpointer.save(state, data_iterator, force=True)
                        logging.warning("SIGTERM: saved step %d to %s; rerun to resume", step, workdir)
                        return state, False
            finally:
                logger.close()
    finally:
        preemption.restore()
    return state, True


def _with_param_norm(step_fn: Callable[[Pytree, dict], tuple[Pytree, dict]]):
    """``step_fn`` with ``param_norm`` (the global norm of the updated parameters) in its metrics."""

    def step(state: Pytree, batch: dict) -> tuple[Pytree, dict]:
        state, metrics = step_fn(state, batch)
        return state, {**metrics, "param_norm": optax.global_norm(state["params"])}

    return step


def check_finite(metrics: dict[str, jax.Array], step: int, checkpointer: Checkpointer) -> None:
    """Stops training when the loss of step ``step`` or the norm of its updated parameters is not
    finite (float32 norms overflow from 1.8e19: such parameters embed to inf or NaN).

    The loss of step s is computed with the parameters of step s - 1: a checkpoint of that step
    would replay it exactly, so it is set aside. The error names the checkpoint left to resume
    from, or says that there is none.
    """
    loss, norm = float(metrics["loss"]), float(metrics["param_norm"])
    if np.isfinite(loss) and np.isfinite(norm):
        return
    checkpointer.wait()
    if np.isfinite(loss):
        cause = f"the parameters after step {step} have norm {norm}"
    else:
        cause = f"the loss of step {step} is {loss}"
        if checkpointer.latest_step() == step - 1:
            moved = checkpointer.set_aside(step - 1)
            cause += f" (with the parameters of checkpoint {step - 1}, moved to {moved})"
    good = checkpointer.latest_step()
    if good is None:
        raise FloatingPointError(
            f"{cause}: training stopped before any checkpoint was saved in {checkpointer.directory}. "
            "Lower config.lr or check the data, then rerun: it starts from the beginning."
        )
    raise FloatingPointError(
        f"{cause}: training stopped. The last good checkpoint is step {good} in "
        f"{checkpointer.directory}; lower config.lr or check the data, then rerun: it resumes from it."
    )
