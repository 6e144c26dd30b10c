"""MODE trainers on real Fashion-MNIST: each smoke run lowers its loss and writes the metrics;
finetune starts from the cross-entropy backbone with fresh projectors.

The runs are ``python -m resend_jax.train`` commands in the background (background.py); the
tests check what they wrote.
"""

import csv
import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest

from resend_jax import checkpoint
from resend_jax.data import UNKNOWN
from resend_jax.mode import evaluate, train
from resend_jax.mode.evaluate import open_splits
from resend_jax.mode.model import build_model

CONFIG = Path(__file__).parent.parent / "configs" / "mode_fashion_mnist.py"

CE_METHODS = ("csd", "knn", "msp", "energy")  # msp and energy on the network's own classifier
METHODS = ("csd", "knn", "msp_probe", "energy_probe")  # the other modes: on a linear probe


def get_config(arg: str):
    spec = importlib.util.spec_from_file_location("mode_fashion_mnist", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def logged(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def check(records: list[dict], workdir: Path, terms: tuple[str, ...], methods=METHODS) -> None:
    losses = [entry["loss"] for entry in records]
    assert len(losses) == 5 and np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    for term in terms:
        assert np.isfinite(records[-1][term])
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(methods) <= set(metrics)
    for method in methods:
        assert 0 <= metrics[method]["auroc"] <= 1
        assert metrics[method]["n_known"] == 20 and metrics[method]["n_unknown"] == 20
    report = (workdir / "report.md").read_text()
    assert "| csd |" in report and "- normalization: cifar10" in report


CE_WEIGHT_DECAY = 1.0  # 10^4 times the recipe's: it would shrink any parameter it reached
CE_SEED = 1  # projectors initialised differently from finetune's (seed 0)


def variables_of(workdir: Path, config, model):
    abstract = jax.eval_shape(partial(train.init_variables, config, model))
    return checkpoint.restore_model_variables(workdir, abstract)


def initial_params(config, model, names: tuple[str, ...]) -> dict:
    """``train.init_variables``' parameters of the modules ``names``, jitted: XLA drops the other
    modules' initialisers (the backbone's would take most of the compile time); flax draws each
    module's numbers from its own path, so the values are those of the full initialisation."""
    return jax.jit(lambda: {name: train.init_variables(config, model)["params"][name] for name in names})()


def train_job(mode: str, **overrides):
    """A background job: the smoke config of ``mode`` with ``overrides``; returns its workdir."""

    def job(background, directory: Path) -> Path:
        flags = {**overrides, **({"init_from": background.result("mode:ce")} if mode == "finetune" else {})}
        command = [sys.executable, "-m", "resend_jax.train", f"--config={CONFIG}:{mode},smoke"]
        command += [f"--workdir={directory / mode}", *(f"--config.{k}={v}" for k, v in flags.items())]
        background.finish(background.popen(command))
        return directory / mode

    return job


BACKGROUND_JOBS = {
    "mode:ce": train_job("ce", weight_decay=CE_WEIGHT_DECAY, seed=CE_SEED),
    "mode:finetune": train_job("finetune"),  # from mode:ce
    "mode:supcon": train_job("supcon"),
    "mode:joint": train_job("joint"),
}


@pytest.fixture(scope="module")
def ce_run(background):
    workdir = background.result("mode:ce")
    return workdir, logged(workdir)


@pytest.mark.background("mode:ce")
def test_ce_lowers_its_loss_and_leaves_unused_modules(ce_run):
    workdir, ce_logged = ce_run
    check(ce_logged, workdir, ("ce", "accuracy"), CE_METHODS)
    config = get_config("ce,smoke")
    config.seed = CE_SEED
    model = build_model(config.model.to_dict(), 5)
    trained = variables_of(workdir, config, model)["params"]
    initial = initial_params(config, model, ("head", "query", "key", "value", "classifier"))
    for name in ("head", "query", "key", "value"):  # no loss term of ce reaches them: not decayed
        jax.tree.map(np.testing.assert_array_equal, trained[name], initial[name])
    assert not np.allclose(trained["classifier"]["kernel"], initial["classifier"]["kernel"])
    conv1 = jax.jit(lambda: train.init_variables(config, model)["params"]["backbone"]["conv1"]["kernel"])()
    assert not np.allclose(trained["backbone"]["conv1"]["kernel"], conv1)


@pytest.mark.background("mode:ce")
def test_ce_scores_msp_and_energy_with_its_own_classifier(ce_run):
    workdir, _ = ce_run
    config = get_config("ce,smoke")
    config.seed = CE_SEED
    splits = open_splits(config)
    model = build_model(config.model.to_dict(), len(splits.train.class_names))
    variables = variables_of(workdir, config, model)
    # The test set as the end-of-training evaluation samples it: known test images, then ood.
    embed_batch = evaluate.embed_function(model, config.data.normalization)
    known = evaluate.sample(splits.test, config.eval.test_size, config.seed + 1)
    ood = evaluate.sample(splits.ood, config.eval.test_size, config.seed + 2)
    parts = [
        evaluate.embed(embed_batch, variables, known, config),
        evaluate.embed(embed_batch, variables, ood, config, UNKNOWN),
    ]
    classifier = variables["params"]["classifier"]
    for part in parts:  # the logits are the trained head applied to the pooled features
        direct = part.features @ np.asarray(classifier["kernel"]) + np.asarray(classifier["bias"])
        np.testing.assert_allclose(part.logits, direct, rtol=1e-5, atol=1e-5)
    logits = np.concatenate([part.logits for part in parts])

    with (workdir / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [*parts[0].paths, *parts[1].paths]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    energy = np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose([float(row["msp"]) for row in rows], probabilities.max(1), rtol=1e-5)
    np.testing.assert_allclose([float(row["energy"]) for row in rows], energy, rtol=1e-5, atol=1e-5)


@pytest.mark.background("mode:ce", "mode:finetune")
def test_finetune_from_ce_starts_with_fresh_projectors_and_lowers_alpa(ce_run, background):
    ce_workdir, _ = ce_run
    workdir = background.result("mode:finetune")
    finetune_logged = logged(workdir)
    check(finetune_logged, workdir, ("alpa",))
    assert json.loads((workdir / "config.json").read_text())["init_from"] == str(ce_workdir)

    # The first logged ALPA loss is the loss of the first batch with the cross-entropy backbone
    # and projectors freshly initialised from finetune's seed, not the checkpoint's.
    config = get_config("finetune,smoke")
    config.init_from = str(ce_workdir)
    splits = open_splits(config)
    model = build_model(config.model.to_dict(), len(splits.train.class_names))
    batch = next(train.train_data(config, splits.train))
    cifar = (np.asarray([0.4914, 0.4822, 0.4465]), np.asarray([0.2023, 0.1994, 0.2010]))
    imagenet = (np.asarray([0.485, 0.456, 0.406]), np.asarray([0.229, 0.224, 0.225]))
    size = config.data.image_size
    images = np.swapaxes(batch["images"], 0, 1).reshape(-1, size, size, 3)
    images = ((images * imagenet[1] + imagenet[0]) - cifar[0]) / cifar[1]
    labels = np.tile(batch["label"], 2)
    ce = variables_of(ce_workdir, config, model)
    fresh = initial_params(config, model, train.PROJECTORS)

    @jax.jit
    def alpa_of(projectors, ce, images, labels):  # arguments, not constants: XLA would fold them
        params = {**ce["params"], **{name: projectors[name] for name in train.PROJECTORS}}
        variables = {"params": params, "batch_stats": ce["batch_stats"]}
        outputs, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return train.losses(outputs, labels, "finetune", config.loss)["alpa"]

    def alpa(projectors):
        return float(alpa_of(projectors, ce, np.asarray(images, np.float32), labels))

    assert finetune_logged[0]["alpa"] == pytest.approx(alpa(fresh), rel=1e-4)
    assert abs(finetune_logged[0]["alpa"] - alpa(ce["params"])) > 1e-3


@pytest.mark.parametrize(
    "mode, terms",
    [
        pytest.param("supcon", ("supcon",), marks=pytest.mark.background("mode:supcon")),
        pytest.param("joint", ("supcon", "alpa"), marks=pytest.mark.background("mode:joint")),
    ],
)
def test_contrastive_modes_lower_their_loss(mode, terms, background):
    workdir = background.result(f"mode:{mode}")
    check(logged(workdir), workdir, terms)
