"""Open-set data on real Fashion-MNIST, the report's numbers, and the smoke training run."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resend_jax import checkpoint
from resend_jax.data.sources import open_source
from resend_jax.openset import NEGATIVE, UNKNOWN, OpenSetSplit, load_partition
from resend_jax.openset.data import train_batches
from resend_jax.openset.evaluate import openset_report
from resend_jax.openset.network import LeNet, preprocess
from resend_jax.openset.train import epoch_sums, load_data, means, predict, train_and_evaluate

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SPLIT = OpenSetSplit(known=(4, 5, 8, 9), negative=(0, 2, 3, 7), unknown=(1, 6))
CONFIG = Path(__file__).parents[1] / "configs" / "openset_eos.py"


def get_config(arg):
    spec = importlib.util.spec_from_file_location("openset_eos", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_partitions_hold_only_the_wanted_classes_and_batches_have_the_right_format():
    train = load_partition(FASHION_MNIST, "train", SPLIT)
    assert sorted(set(train["label"].tolist())) == [NEGATIVE, 0, 1, 2, 3]
    assert len(train["label"]) == 48_000 and np.count_nonzero(train["label"] == NEGATIVE) == 24_000
    source = open_source(f"idx:{FASHION_MNIST}:train")
    indices = np.flatnonzero(np.isin(source.labels, SPLIT.known + SPLIT.negative))
    original = source.labels[indices]
    known = train["label"] >= 0
    np.testing.assert_array_equal(np.asarray(SPLIT.known)[train["label"][known]], original[known])
    assert np.isin(original[~known], SPLIT.negative).all()
    np.testing.assert_array_equal(
        train["image"][:50, ..., 0], [source[i]["image"][..., 0] for i in indices[:50]]
    )
    test = load_partition(FASHION_MNIST, "test", SPLIT)
    assert sorted(set(test["label"].tolist())) == [UNKNOWN, 0, 1, 2, 3]
    assert len(test["label"]) == 6_000

    batch = next(train_batches(train, 64, 4, seed=0, epoch=0))
    assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
    assert batch["target"].shape == (64, 4) and batch["target"].dtype == np.float32
    np.testing.assert_allclose(batch["target"].sum(-1), 1.0)
    assert batch["image"].max() > 200


def test_report_numbers(tmp_path):
    def outputs(scores, predictions, labels):
        # Logits whose softmax max is the score, at the predicted class (4 classes).
        scores = np.asarray(scores, np.float64)
        logits = np.tile(np.log((1 - scores) / 3)[:, None], (1, 4))
        logits[np.arange(len(scores)), predictions] = np.log(scores)
        return {"feature": np.ones((len(scores), 2)), "logits": logits, "label": np.asarray(labels)}

    known = outputs([0.9, 0.8, 0.7, 0.6, 0.95], [0, 1, 2, 3, 1], [0, 1, 2, 3, 0])  # the last is wrong
    negative = outputs([0.3, 0.4], [0, 0], [NEGATIVE] * 2)
    unknown = outputs([0.65, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], [0] * 10, [UNKNOWN] * 10)
    flat = openset_report({"known": known, "negative": negative, "unknown": unknown}, tmp_path, tau=0.55)
    report = json.loads((tmp_path / "openset_metrics.json").read_text())
    assert list(report) == ["unknown", "negative", "tau", "ccr_at_tau", "fpr_at_tau"]
    assert report["tau"] == 0.55
    assert report["ccr_at_tau"] == pytest.approx(0.8) and report["fpr_at_tau"] == pytest.approx(0.1)
    assert report["unknown"]["ccr_at_fpr"] == pytest.approx({"0.001": 0.6, "0.01": 0.6, "0.1": 0.8})
    assert report["negative"]["ccr_at_fpr"] == pytest.approx({"0.001": 0.8, "0.01": 0.8, "0.1": 0.8})
    assert report["negative"]["auroc"] == pytest.approx(1.0)
    assert report["unknown"]["auroc"] == pytest.approx(49 / 50)
    assert flat["tau_fpr_0.1"] == pytest.approx(0.6) and flat["fpr_at_tau_fpr_0.1"] == pytest.approx(0.1)
    for name in ("oscr.png", "oscr.csv", "feature_magnitudes.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("openset")
    return workdir, train_and_evaluate(get_config("smoke"), str(workdir))


def test_smoke_loss_falls_on_fashion_mnist(smoke_run):
    workdir, results = smoke_run
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "epoch" in line]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # A fresh network starts at log(4) = 1.386 on every sample.
    assert epochs[0]["train/loss"] < 1.2 and epochs[1]["train/loss"] < epochs[0]["train/loss"] - 0.05
    assert epochs[1]["val/loss"] < epochs[0]["val/loss"]
    assert epochs[1]["train/confidence_known"] > epochs[0]["train/confidence_known"]
    assert epochs[1]["val/accuracy"] > 0.85
    assert results["unknown/auroc"] > 0.8
    report = json.loads((workdir / "openset_metrics.json").read_text())
    assert set(report["unknown"]["ccr_at_fpr"]) == {"0.001", "0.01", "0.1"}
    for name in ("oscr.png", "oscr.csv", "feature_magnitudes.png", "config.json"):
        assert (workdir / name).is_file()


def test_rerun_resumes_min_steps_extends_and_the_best_validation_epoch_is_evaluated(smoke_run):
    workdir, _ = smoke_run
    config = get_config("smoke")
    # One epoch is 62 steps: 125 steps take a third. Its high learning rate makes it the worst.
    config.num_epochs, config.min_steps, config.learning_rate = 1, 125, 0.3
    results = train_and_evaluate(config, str(workdir))
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "epoch" in line]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[-1]["step"] == 186
    confidences = [e["val/confidence"] for e in epochs]
    assert np.argmax(confidences) == 1 and confidences[2] < confidences[1] - 0.1
    assert results["kept_epoch"] == 2 and results["kept_val/confidence"] == pytest.approx(confidences[1])
    report = json.loads((workdir / "openset_metrics.json").read_text())
    assert report["training"] == {
        "epochs": 3,
        "kept_epoch": 2,
        "kept_val/confidence": results["kept_val/confidence"],
    }

    # The kept parameters, restored from the last checkpoint, give the reported numbers.
    with checkpoint.checkpoint_manager(workdir, read_only=True) as manager:
        best = manager.restore(3, args=ocp.args.Composite(best=ocp.args.StandardRestore()))["best"]
    assert int(best["epoch"]) == 2
    model = LeNet(num_classes=4, **config.model.to_dict())
    apply_fn = jax.jit(lambda params, images: model.apply({"params": params}, preprocess(images)))
    data = load_data(config)
    _, logits = predict(apply_fn, best["params"], data["validation"]["image"], config.eval.batch_size)
    sums = jax.tree.map(float, epoch_sums(logits, data["validation"]["label"]))
    assert means(sums, "val")["val/confidence"] == pytest.approx(results["kept_val/confidence"], rel=1e-5)
    known = data["test"]["label"] >= 0
    _, logits = predict(apply_fn, best["params"], data["test"]["image"][known], config.eval.batch_size)
    accuracy = np.mean(logits.argmax(-1) == data["test"]["label"][known])
    assert results["closed_set_accuracy"] == pytest.approx(accuracy)


def test_softmax_baseline_drops_negatives():
    config = get_config("smoke")
    config.loss = "softmax"
    data = load_data(config)
    assert (data["train"]["label"] >= 0).all() and len(data["train"]["label"]) < 2000
    assert (data["validation"]["label"] == NEGATIVE).any()
