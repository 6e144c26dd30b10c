"""The leaderboard: aggregation over seeds, its files, and every system through ``benchmark``."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resend_jax.benchmark import leaderboard, transfer
from resend_jax.benchmark import run as benchmark
from resend_jax.train import common

CONFIG = Path(__file__).parents[1] / "configs" / "benchmark_fashion_mnist.py"


def benchmark_config(arg: str | None = None):
    spec = importlib.util.spec_from_file_location("benchmark_fashion_mnist", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


FAKE_RUNS = {
    2: {"a+x": {"auroc": 0.7, "fpr95": 0.6}},
    0: {"a+x": {"auroc": 0.8, "fpr95": 0.5}, "b+y": {"auroc": 0.55, "fpr95": 0.9}},
    1: {"a+x": {"auroc": 0.9, "fpr95": 0.3}, "b+y": {"auroc": 0.65, "fpr95": 0.7}},
}
ONE_SEED = {"d+w": {"auroc": 0.615, "fpr95": 0.7325}}  # a system run on one seed only


def test_aggregate_means_and_sample_std_over_seeds():
    board = leaderboard.aggregate(FAKE_RUNS)
    assert list(board) == ["a+x", "b+y"]
    a, b = board["a+x"], board["b+y"]
    assert a["auroc"]["runs"] == [0.8, 0.9, 0.7]  # seed order
    assert a["auroc"]["mean"] == pytest.approx(0.8)
    assert a["auroc"]["std"] == pytest.approx(0.1)  # sqrt(((0)^2 + 0.1^2 + 0.1^2) / 2)
    assert a["fpr95"]["mean"] == pytest.approx(1.4 / 3)
    assert a["fpr95"]["std"] == pytest.approx(
        np.sqrt(((0.5 - 1.4 / 3) ** 2 + (0.3 - 1.4 / 3) ** 2 + (0.6 - 1.4 / 3) ** 2) / 2)
    )
    assert b["auroc"]["runs"] == [0.55, 0.65]  # the seeds it has
    assert b["auroc"]["std"] == pytest.approx(np.sqrt(0.005))
    single = leaderboard.aggregate({0: {"a+x": {"auroc": 0.8, "fpr95": 0.5}}})
    assert single["a+x"]["auroc"] == {"mean": 0.8, "std": 0.0, "runs": [0.8]}


def test_leaderboard_files(tmp_path):
    board = leaderboard.aggregate({**FAKE_RUNS, 0: {**FAKE_RUNS[0], **ONE_SEED}})
    blocks = {"systems": ["a+x", "d+w"], "ablation": ["b+y", "c+z"]}
    leaderboard.write(tmp_path, board, blocks, {"seeds": "0, 1, 2"})
    assert json.loads((tmp_path / "leaderboard.json").read_text()) == board
    assert board["d+w"]["auroc"] == {"mean": 0.615, "std": 0.0, "runs": [0.615]}
    text = (tmp_path / "leaderboard.md").read_text()
    assert "| a+x | 80.00 +- 10.00 | 46.67 +- 15.28 | 3 |" in text
    assert "| b+y | 60.00 +- 7.07 | 80.00 +- 14.14 | 2 |" in text
    assert "| d+w | 61.50 | 73.25 | 1 |" in text  # one seed: no spread to show
    assert "c+z" not in text and "- seeds: 0, 1, 2" in text
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "override, message",
    [
        ({"systems": "resend"}, "expected TRAINING\\+SCORE"),
        ({"systems": "nope+knn"}, "expected TRAINING\\+SCORE"),
        ({"systems": "ce+nope"}, "no score 'nope'"),
        ({"seeds": "0,x"}, "config.seeds must be comma-separated integers"),
        ({"seeds": "1,1"}, "distinct seeds"),
        ({"systems": "mode_ft+csd,ce+msp"}, "a system of 'ce' must come before 'mode_ft'"),
    ],
)
def test_bad_names_fail_before_any_training(tmp_path, override, message):
    config = benchmark_config("smoke")
    config.update(override)
    with pytest.raises(ValueError, match=message):
        benchmark.run(config, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Every system of the full config, two steps per training, on real Fashion-MNIST images."""
    workdir = tmp_path_factory.mktemp("benchmark")
    config = benchmark_config("smoke")
    return config, workdir, benchmark.run(config, workdir)


def test_every_system_trains_scores_and_enters_the_leaderboard(smoke_run):
    config, workdir, board = smoke_run
    default = benchmark_config()
    systems = benchmark.split(default.systems) + benchmark.split(default.ablation)
    transferred = [f"{s} (3-shot)" for s in benchmark.split(default.transfer.systems)]
    assert len(systems) == 13 and len(transferred) == 4 and list(board) == systems + transferred
    assert json.loads((workdir / "leaderboard.json").read_text()) == board
    for system in systems + transferred:
        for metric in ("auroc", "fpr95"):
            entry = board[system][metric]
            assert len(entry["runs"]) == 1 and entry["std"] == 0.0
            assert 0.0 <= entry["mean"] <= 1.0 and entry["mean"] == entry["runs"][0]
    for training in ("resend", "ce", "supcon", "mode", "mode_ft"):
        recorded = json.loads((workdir / "seed_0" / training / "scores.json").read_text())
        assert recorded["config"]["training"]["total_steps"] == 2
        assert recorded["config"]["training"]["seed"] == 0
        for metrics in recorded["metrics"].values():
            # ReSeND: a 40-image sample of the test split; MODE: 20 known and 20 unknown.
            if training == "resend":
                assert metrics["n_known"] + metrics["n_unknown"] == 2 * config.data.test_size
            else:
                assert (metrics["n_known"], metrics["n_unknown"]) == (20, 20)
    assert (workdir / "seed_0" / "resend" / "eval" / "report.md").exists()
    text = (workdir / "leaderboard.md").read_text()
    assert "### ablation: post-hoc scores on the ReSeND backbone" in text
    assert "3 known vs 1 unknown (mean over the splits), 3 support images per class" in text
    recorded = json.loads((workdir / "seed_0" / "resend" / "transfer.json").read_text())
    assert recorded["config"]["transfer"]["classes"] == "6,7,8,9"
    finetuned = json.loads((workdir / "seed_0" / "mode_ft" / "scores.json").read_text())["config"]["training"]
    assert finetuned["mode"] == "finetune" and finetuned["init_from"] == str(
        workdir / "seed_0" / "ce" / "train"
    )


def test_transfer_splits_every_known_set():
    assert transfer.splits(4, 1) == [([1, 2, 3], [0]), ([0, 2, 3], [1]), ([0, 1, 3], [2]), ([0, 1, 2], [3])]
    assert len(transfer.splits(4, 2)) == 6
    with pytest.raises(ValueError, match="config.transfer.unknown"):
        transfer.splits(4, 4)
    np.testing.assert_array_equal(transfer.relabel(np.array([0, 1, 2, 3, 2]), [3, 1, 2], 4), [-1, 1, 2, 0, 2])


def test_a_rerun_reuses_the_recorded_scores(smoke_run, monkeypatch):
    config, workdir, board = smoke_run

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(benchmark, "train_and_evaluate", no_training)
    assert benchmark.run(config, workdir) == board
    recorded = config.copy_and_resolve_references()
    recorded.seeds, recorded.only_recorded = "0,1", True  # seed 1 was never trained: left out
    assert benchmark.run(recorded, workdir) == board


def test_a_changed_training_starts_anew_and_its_dependants_follow(smoke_run, monkeypatch, tmp_path):
    """The recorded checkpoints match the configs that trained them (nothing is set aside); a
    new ce learning rate sets ce's run aside, and mode_ft's, which starts from it."""
    config, workdir, _ = smoke_run
    for training in ("resend", "ce", "supcon", "mode", "mode_ft"):
        train_config = benchmark.training_config(config, training, 0, ["knn"], workdir)
        assert common.resume_conflicts(train_config, workdir / "seed_0" / training / "train") == []
    copy = tmp_path / "benchmark"
    shutil.copytree(workdir, copy)
    trained = []

    def stub(train_config, train_dir):  # records the call, writes the metrics a MODE run would
        trained.append(Path(train_dir).parent.name)
        Path(train_dir).mkdir(parents=True)
        fake = {"auroc": 0.5, "fpr95": 0.5}
        (Path(train_dir) / "metrics.json").write_text(json.dumps({"knn": fake, "csd": fake}))

    monkeypatch.setattr(benchmark, "train_and_evaluate", stub)
    changed = config.copy_and_resolve_references()
    changed.training.ce.lr = 0.5
    changed.systems, changed.ablation, changed.transfer.systems = "ce+knn,mode_ft+csd", "", ""
    benchmark.run(changed, copy)
    assert trained == ["ce", "mode_ft"]
    (aside,) = (copy / "seed_0" / "ce" / "superseded").iterdir()
    assert (aside / "train" / "config.json").exists() and (aside / "scores.json").exists()
    (aside,) = (copy / "seed_0" / "mode_ft" / "superseded").iterdir()
    assert (aside / "train" / "config.json").exists() and (aside / "scores.json").exists()
    assert not (copy / "seed_0" / "supcon" / "superseded").exists()
    # Rerun: both records are current now.
    benchmark.run(changed, copy)
    assert trained == ["ce", "mode_ft"]
