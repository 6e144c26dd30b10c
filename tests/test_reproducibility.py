"""Runs reproduce to the bit on one machine: the same training config run twice in separate
processes saves bit-identical checkpoints, and evaluating a saved checkpoint twice writes the same
``metrics.json`` and ``scores.csv``.

Each pair of processes runs at once, in the background (background.py). The first shares the
session's compilation cache (conftest.py), the second compiles every program itself, so that a
cached executable cannot stand in for a compilation that would differ. Another CPU type or
another XLA can change the last bits (README).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from resend_jax import checkpoint

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
STEPS = 4  # the smoke config saves steps 3 and 4
ITEMS = ("model", "train")  # {"params", "batch_stats"} and {"opt", "step", "rng"}
# metrics.jsonl: everything but the wall-clock time and the rate derived from it.
LOGGED = ("step", "loss", "pair_accuracy", "lr", "grad_norm", "param_norm")


def environments() -> tuple[dict, dict]:
    """The first process's environment (the session's compilation cache) and the second's (none)."""
    first = {**os.environ, "JAX_PLATFORMS": "cpu"}
    second = {k: v for k, v in first.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    second["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return first, second


def run_twice(background, commands: list[list[str]]) -> None:
    processes = [background.popen(command, env) for command, env in zip(commands, environments())]
    for process in processes:
        background.finish(process)


def train_twice(background, directory: Path) -> tuple[Path, Path]:
    """Two workdirs of the smoke config (real Fashion-MNIST, augmentation, rotation classes)."""
    commands = [
        [
            sys.executable,
            "-m",
            "resend_jax.train",
            "--config=configs/resend_fashion_mnist.py:smoke",
            f"--workdir={directory / name}",
            f"--config.total_steps={STEPS}",
        ]
        for name in ("a", "b")
    ]
    run_twice(background, commands)
    return directory / "a", directory / "b"


def saved_leaves(workdir: Path) -> dict[str, np.ndarray]:
    """Every array of every saved step, as orbax wrote it (no target tree), by step and path."""
    import jax

    leaves = {}
    with checkpoint.checkpoint_manager(workdir, read_only=True) as manager:
        steps = sorted(manager.all_steps())
        for step in steps:
            args = ocp.args.Composite(**{item: ocp.args.StandardRestore() for item in ITEMS})
            restored = manager.restore(step, args=args)
            for path, value in jax.tree_util.tree_leaves_with_path(dict(restored)):
                leaves[f"{step}{jax.tree_util.keystr(path)}"] = np.asarray(value)
    assert steps == [3, STEPS]
    return leaves


@pytest.mark.background("reproducibility:train")
def test_training_twice_saves_bit_identical_checkpoints(background):
    trained_twice = background.result("reproducibility:train")
    a, b = (saved_leaves(workdir) for workdir in trained_twice)
    assert sorted(a) == sorted(b)
    assert sum(key.startswith(f"{STEPS}['model']['params']") for key in a) > 50
    assert any(key.startswith(f"{STEPS}['train']['opt']") for key in a)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key
    # The runs trained: the parameters moved between the two saved steps.
    assert not np.array_equal(
        a["3['model']['params']['relational']['head']['kernel']"],
        a[f"{STEPS}['model']['params']['relational']['head']['kernel']"],
    )
    # The data iterator's position, saved beside them, and the logged numbers are the same too.
    for step in (3, STEPS):
        positions = [
            {
                p.name: json.loads(p.read_text())
                for p in (w / "checkpoints" / str(step) / "data").glob("process_*.json")
            }
            for w in trained_twice
        ]
        assert positions[0] == positions[1] == {"process_0-of-1.json": {"next_index": step}}
    logged = [
        [
            {key: json.loads(line)[key] for key in LOGGED}
            for line in (w / "metrics.jsonl").read_text().splitlines()
        ]
        for w in trained_twice
    ]
    assert len(logged[0]) == STEPS and logged[0] == logged[1]


def write_images(root: Path, split: str, per_class: int, classes: range) -> str:
    """``per_class`` Fashion-MNIST images of each class as PNGs under ``root/c<class>/``."""
    from resend_jax.data.sources import open_source

    source = open_source(f"idx:{FASHION_MNIST}:{split}")
    for c in classes:
        (root / f"c{c}").mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(source.labels == c)[:per_class]):
            Image.fromarray(np.asarray(source[int(index)]["image"]).squeeze()).save(
                root / f"c{c}" / f"{i}.png"
            )
    return f"folder:{root}"


def evaluate_twice(background, directory: Path) -> tuple[Path, Path]:
    """Every default method (the relation, CSD, kNN, Mahalanobis, prototypes, the linear probe's
    scores) on the first smoke run's checkpoint: known classes 0-5, unknown 6-9 of the test split."""
    checkpoint_dir = background.result("reproducibility:train")[0]
    support = write_images(directory / "support", "train", 10, range(6))  # kNN: k = 50
    test = write_images(directory / "test", "test", 4, range(10))
    commands = [
        [
            sys.executable,
            "-m",
            "resend_jax.evaluate",
            "--config=configs/eval.py",
            f"--workdir={directory / name}",
            f"--config.checkpoint={checkpoint_dir}",
            f"--config.data.support={support}",
            f"--config.data.test={test}",
        ]
        for name in ("a", "b")
    ]
    run_twice(background, commands)
    return directory / "a", directory / "b"


BACKGROUND_JOBS = {"reproducibility:train": train_twice, "reproducibility:evaluate": evaluate_twice}


@pytest.mark.background("reproducibility:train", "reproducibility:evaluate")
def test_evaluating_a_checkpoint_twice_writes_the_same_metrics(background):
    a, b = background.result("reproducibility:evaluate")
    metrics = json.loads((a / "metrics.json").read_text())
    assert {"resend", "csd", "knn", "mahalanobis", "msp_probe"} <= set(metrics)
    assert metrics["resend"]["n_known"] == 24 and metrics["resend"]["n_unknown"] == 16
    assert all(0 <= m["auroc"] <= 1 for m in metrics.values())
    for name in ("metrics.json", "scores.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
