"""Training leaves nothing silently wrong: damaged checkpoints, NaN stops, another model on a
workdir, two runs on one workdir, metrics after a resume, and the commands' error lines.

Most tests drive ``common.train_loop`` with a toy state (a vector pulled towards each batch's
mean with momentum, a running mean as batch statistics) and a grain iterator, so that each
takes seconds; ``test_train.py`` runs the same machinery with ReSeND.
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from resend_jax import checkpoint, cli
from resend_jax.train import common

ROOT = Path(__file__).parent.parent
WIDTH = 4096  # large enough for orbax to store the parameters in data files of their own


def toy_config(**overrides) -> ConfigDict:
    config = ConfigDict(
        {
            "total_steps": 6,
            "batch_size": 2,
            "log_every": 1,
            "checkpoint_every": 2,
            "keep_checkpoints": 3,
            "lr": 0.1,
            "model": {"width": WIDTH},
        }
    )
    config.update(overrides)
    return config


def toy_data(nan_at: int | None = None, spike_at: int | None = None):
    """Batch i: two rows of seed i, and the update's scale (1e30 at ``spike_at``, NaN rows at ``nan_at``)."""

    def batch(i):
        x = np.random.default_rng(i).standard_normal((2, WIDTH)).astype(np.float32)
        scale = np.full((2,), 1e30 if i == spike_at else 1.0, np.float32)
        return {"x": x * np.float32("nan") if i == nan_at else x, "scale": scale}

    return iter(grain.MapDataset.range(10**6).map(batch).to_iter_dataset())


def toy_init(config: ConfigDict, variables=None) -> dict:
    del variables
    width = config.model.width
    return {
        "params": {"w": jnp.ones(width)},
        "batch_stats": {"mean": jnp.zeros(width)},
        "opt": {"momentum": jnp.zeros(width)},
        "step": jnp.zeros([], jnp.int32),
        "rng": jax.random.PRNGKey(0),
    }


def toy_step(state: dict, batch: dict, lr: float) -> tuple[dict, dict]:
    mean = batch["x"].mean(0)
    grad = state["params"]["w"] - mean
    momentum = 0.9 * state["opt"]["momentum"] + grad
    new_state = {
        "params": {"w": state["params"]["w"] - lr * batch["scale"].mean() * momentum},
        "batch_stats": {"mean": 0.9 * state["batch_stats"]["mean"] + 0.1 * mean},
        "opt": {"momentum": momentum},
        "step": state["step"] + 1,
        "rng": state["rng"],
    }
    return new_state, {"loss": 0.5 * jnp.mean(jnp.square(grad))}


def toy_run(workdir: Path, data=None, **overrides) -> np.ndarray:
    """Trains the toy in ``workdir``; returns the final parameters."""
    config = toy_config(**overrides)
    state, _ = common.train_loop(
        config,
        workdir,
        init=partial(toy_init, config),
        pretrained=lambda: None,
        step_fn=partial(toy_step, lr=config.lr),
        data_iterator=toy_data() if data is None else data,
        mesh=common.data_mesh(),
        rate_name="rows_per_second",
        desc="toy",
        model_json={"model_config": config.model.to_dict(), "image_size": 32, "trainer": "toy"},
    )
    return np.asarray(state["params"]["w"])


def logged_steps(workdir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: Path) -> list[int]:
    with common.Checkpointer(workdir) as checkpointer:
        return list(checkpointer.manager.all_steps())


def set_aside(workdir: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (workdir / common.BAD_CHECKPOINTS).iterdir())


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> np.ndarray:
    """The final parameters of an uninterrupted 6-step toy run."""
    return toy_run(tmp_path_factory.mktemp("straight"))


def remove_largest_data_file(step_dir: Path) -> None:
    max(step_dir.glob("model/ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size).unlink()


DAMAGES = {
    "data_file": remove_largest_data_file,
    "train_item": lambda step_dir: shutil.rmtree(step_dir / "train"),
    "manifest": lambda step_dir: (step_dir / "model" / "manifest.ocdbt").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, straight, damage, caplog):
    """One warning names the damaged step and its cause; the run resumes from the step before,
    bit-identical to an uninterrupted one, and logs each step once."""
    toy_run(tmp_path, total_steps=4)
    assert checkpoint_steps(tmp_path) == [2, 4]
    DAMAGES[damage](tmp_path / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING):
        resumed = toy_run(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"checkpoint {tmp_path / 'checkpoints' / '4'} does not restore (" in warnings[0]
    assert "resuming from step 2" in warnings[0] and "\n" not in warnings[0]
    np.testing.assert_array_equal(resumed, straight)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert checkpoint_steps(tmp_path) == [2, 4, 6] and set_aside(tmp_path) == ["4"]


def test_no_checkpoint_restores_is_an_error_that_moves_nothing(tmp_path):
    toy_run(tmp_path, total_steps=4)
    for step in (2, 4):
        shutil.rmtree(tmp_path / "checkpoints" / str(step) / "train")
    with pytest.raises(ValueError, match=r"restores: step 4: KeyError: .*train.*; step 2: KeyError"):
        toy_run(tmp_path)
    assert checkpoint_steps(tmp_path) == [2, 4]


def test_diverged_update_stops_before_any_checkpoint(tmp_path, straight):
    """lr=1e30: the parameters after step 1 are ~1e30 (finite, but their norm is not): no
    checkpoint of them, an error that says so, and a rerun with a sane lr starts over."""
    with pytest.raises(FloatingPointError, match="after step 1 have norm inf.*before any checkpoint"):
        toy_run(tmp_path, lr=1e30)
    assert checkpoint_steps(tmp_path) == []
    np.testing.assert_array_equal(toy_run(tmp_path), straight)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_diverged_update_keeps_the_checkpoint_before_it(tmp_path):
    with pytest.raises(
        FloatingPointError, match="after step 5 have norm inf.*last good checkpoint is step 4"
    ):
        toy_run(tmp_path, data=toy_data(spike_at=4))
    assert checkpoint_steps(tmp_path) == [2, 4]


def test_nan_loss_sets_aside_the_checkpoint_it_was_computed_with(tmp_path, straight):
    """Step 5's loss is computed with checkpoint 4's parameters (and its data position): resuming
    from 4 would replay it, so 4 is set aside and the error names step 2."""
    with pytest.raises(FloatingPointError, match="loss of step 5 is nan.*last good checkpoint is step 2"):
        toy_run(tmp_path, data=toy_data(nan_at=4))
    assert checkpoint_steps(tmp_path) == [2] and set_aside(tmp_path) == ["4"]
    np.testing.assert_array_equal(toy_run(tmp_path), straight)


def test_another_config_is_refused_before_anything_is_written(tmp_path):
    """Another model or learning rate would mix two recipes in one run; a longer run, other
    logging and checkpointing, and keys the stored config lacks may resume."""
    toy_run(tmp_path, total_steps=2)
    stored = {name: (tmp_path / name).read_bytes() for name in ("config.json", "model.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match=rf"model.width: {WIDTH} in .*config.json, {WIDTH + 1} now"):
        toy_run(tmp_path, total_steps=4, model={"width": WIDTH + 1})
    with pytest.raises(ValueError, match=r"another configuration: lr: 0.1 in .*config.json, 0.2 now"):
        toy_run(tmp_path, total_steps=4, lr=0.2)
    assert {name: (tmp_path / name).read_bytes() for name in stored} == stored
    assert common.resume_conflicts(toy_config(log_every=2, checkpoint_every=1, new_key=1), tmp_path) == []
    toy_run(tmp_path, total_steps=4)
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 4
    assert logged_steps(tmp_path) == [1, 2, 3, 4]


def test_a_schedule_that_decays_to_total_steps_makes_it_part_of_the_recipe(tmp_path):
    toy_run(tmp_path, total_steps=2, lr_schedule="cosine")
    with pytest.raises(ValueError, match=r"another configuration: total_steps: 2 in .*config.json, 4 now"):
        toy_run(tmp_path, total_steps=4, lr_schedule="cosine")
    assert (
        common.resume_conflicts(toy_config(total_steps=2, lr_schedule="cosine", log_every=3), tmp_path) == []
    )


def test_a_busy_workdir_fails_at_once(tmp_path):
    """Another process's lock: ``test_train_errors_are_the_last_line``."""
    with common.workdir_lock(tmp_path):
        assert (tmp_path / common.LOCK).read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        with pytest.raises(common.WorkdirBusyError, match=f"{tmp_path} is in use by pid {os.getpid()} on "):
            toy_run(tmp_path)
        assert not (tmp_path / "config.json").exists()
    assert (tmp_path / common.LOCK).read_text() == ""
    toy_run(tmp_path, total_steps=2)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / common.LOCK).write_text("pid 999999 on elsewhere\n")
    with caplog.at_level(logging.WARNING):
        toy_run(tmp_path, total_steps=2)
    assert any("taking over the lock of pid 999999 on elsewhere" in r.getMessage() for r in caplog.records)
    assert (tmp_path / common.LOCK).read_text() == ""


def test_metrics_of_steps_after_the_restored_one_are_dropped(tmp_path, straight):
    """A run killed after logging steps 5 and 6 but before saving them resumes from step 4."""
    toy_run(tmp_path, checkpoint_every=4, total_steps=6)
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')  # a line cut short by the kill
    np.testing.assert_array_equal(toy_run(tmp_path, checkpoint_every=4), straight)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_first_cause_is_one_line_without_the_tensorstore_spec():
    error = ValueError('NOT_FOUND: Error reading "w": missing [tensorstore_spec=\'{"a": 1}\']\nmore')
    assert checkpoint.first_cause(error) == 'ValueError: NOT_FOUND: Error reading "w": missing'
    assert checkpoint.first_cause(KeyError("item 'train' not found")) == "KeyError: item 'train' not found"


def command(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def last_line(done: subprocess.CompletedProcess) -> str:
    return (done.stdout + done.stderr).strip().splitlines()[-1]


def test_config_errors_are_one_line_with_did_you_mean(tmp_path):
    """A key typo keeps ml_collections' suggestion; a config file that raises keeps its exception."""
    train = ("resend_jax.train", f"--workdir={tmp_path}")
    done = command(*train, "--config=configs/resend_fashion_mnist.py:smoke", "--config.model.depht=2")
    assert done.returncode == 1 and done.stdout + done.stderr == (
        'error in --config: no key \'depht\'. Did you mean "depth" instead of "depht"?\n'
    )
    done = command(*train, "--config=configs/resend_fashion_mnist.py:smok")
    assert done.returncode == 1 and len((done.stdout + done.stderr).splitlines()) == 1
    assert last_line(done).endswith("ValueError: unknown config argument 'smok'; use 'smoke' or nothing")


def test_a_busy_workdir_is_the_last_line_of_train(tmp_path):
    """A second ``train`` on a workdir that this process holds fails at once, naming it."""
    with common.workdir_lock(tmp_path):
        done = command(
            "resend_jax.train", "--config=configs/resend_fashion_mnist.py:smoke", f"--workdir={tmp_path}"
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    busy = f"WorkdirBusyError: {tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()}"
    assert last_line(done).startswith(busy)
    assert not (tmp_path / "config.json").exists()


def test_flag_and_main_errors_are_the_last_line(tmp_path):
    done = command("resend_jax.train", "--config=configs/resend_fashion_mnist.py:smoke")
    assert done.returncode == 1
    assert last_line(done).startswith("error in the command line") and "--workdir" in last_line(done)
    done = command("resend_jax.convert_torch", f"--out={tmp_path / 'm'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert last_line(done).startswith("ValueError: give --feature_extractor and --relational")


def test_other_libraries_info_logs_are_dropped():
    def record(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "message", None, None)

    orbax = str(Path(jax.__file__).parent.parent / "orbax" / "checkpoint" / "checkpoint_manager.py")
    assert not cli._own_info_only(record(orbax, logging.INFO))
    assert cli._own_info_only(record(orbax, logging.WARNING))
    assert cli._own_info_only(record(common.__file__, logging.INFO))
