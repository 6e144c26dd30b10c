"""Output a user sees: no warnings when loading a model or evaluating, progress bars only for
phases long enough to need one."""

import logging

import jax.numpy as jnp
import numpy as np
from test_evaluate import config_for, write_folder

import resend_jax
from resend_jax.evaluate import Features, linear, neighbours, run, score_features

BARS = ("kNN search", "CSD search", "linear probe", "scores:")


def warnings_in(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_model_logs_no_warning(tiny_model_dir, caplog):
    with caplog.at_level(logging.DEBUG):
        model = resend_jax.load_model(tiny_model_dir)
    assert model.image_size == 32
    assert any(r.name == "absl" for r in caplog.records)  # orbax's logs are captured here
    assert warnings_in(caplog) == []


def test_small_evaluation_logs_no_warning_and_shows_no_search_bar(tiny_model_dir, tmp_path, caplog, capsys):
    support = write_folder(tmp_path / "support", ["apple", "bird"], 3, 0)
    test = write_folder(tmp_path / "test", ["apple", "bird", "zebra"], 2, 1)
    config = config_for(tiny_model_dir, support, test, methods="knn,csd,proto_cosine")
    config.data.known_classes = "apple,bird"
    config.data.image_size = 32
    with caplog.at_level(logging.INFO):
        metrics = run.evaluate(config, tmp_path / "out")
    assert set(metrics) == {"knn", "csd", "proto_cosine"}
    assert warnings_in(caplog) == []
    stderr = capsys.readouterr().err
    assert "embed test" in stderr  # the embedding's bar, always shown
    assert not [bar for bar in BARS if bar in stderr]


def test_progress_bars_from_1e8_pairs_or_10000_support_features(capsys):
    rng = np.random.default_rng(0)
    queries, bank = rng.normal(size=(10_000, 2)), rng.normal(size=(10_000, 2))
    neighbours.kth_nearest_sq_distance(queries, bank, 1, bank_chunk=10_000)
    assert "kNN search: 100%" in capsys.readouterr().err
    neighbours.kth_nearest_sq_distance(queries[:9_999], bank, 1, bank_chunk=10_000)
    assert capsys.readouterr().err == ""

    support = Features(queries, rng.integers(0, 2, 10_000))
    test = Features(bank, np.where(rng.random(10_000) < 0.5, 0, -1))
    score_features(support, test, methods=["proto_cosine"])
    stderr = capsys.readouterr().err
    assert "scores: 100%" in stderr and "proto_cosine" in stderr

    linear.fit_softmax(jnp.asarray(queries), jnp.asarray(support.labels), 2, 1e-3, steps=3, block=2)
    stderr = capsys.readouterr().err
    assert "linear probe: 100%" in stderr and "3/3" in stderr
