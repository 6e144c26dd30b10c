"""MODE trainers on real Fashion-MNIST: each smoke run lowers its loss and writes the metrics."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from resend_jax.mode import train

CONFIG = Path(__file__).parent.parent / "configs" / "mode_fashion_mnist.py"

METHODS = ("csd", "knn", "msp", "energy")


def get_config(arg: str):
    spec = importlib.util.spec_from_file_location("mode_fashion_mnist", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def run(mode: str, workdir: Path, **overrides) -> list[dict]:
    config = get_config(f"{mode},smoke")
    config.update(overrides)
    train.train_and_evaluate(config, str(workdir))
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def check(logged: list[dict], workdir: Path, terms: tuple[str, ...]) -> None:
    losses = [entry["loss"] for entry in logged]
    assert len(losses) == 5 and np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    for term in terms:
        assert np.isfinite(logged[-1][term])
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(METHODS) <= set(metrics)
    for method in METHODS:
        assert 0 <= metrics[method]["auroc"] <= 1
        assert metrics[method]["n_known"] == 20 and metrics[method]["n_unknown"] == 20
    assert "| csd |" in (workdir / "report.md").read_text()


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mode") / "ce"
    return workdir, run("ce", workdir)


def test_ce_lowers_its_loss(ce_run):
    workdir, logged = ce_run
    check(logged, workdir, ("ce", "accuracy"))


def test_finetune_from_ce_lowers_alpa(ce_run, tmp_path):
    workdir, _ = ce_run
    check(run("finetune", tmp_path, init_from=str(workdir)), tmp_path, ("alpa",))


@pytest.mark.parametrize("mode, terms", [("supcon", ("supcon",)), ("joint", ("supcon", "alpa"))])
def test_contrastive_modes_lower_their_loss(mode, terms, tmp_path):
    check(run(mode, tmp_path), tmp_path, terms)
