"""End to end: ``evaluate`` on a small folder of PNGs it writes, with a converted random model."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resend_jax.evaluate import metrics, run

REPO = Path(__file__).parent.parent
CONFIG = REPO / "configs" / "eval.py"
COLOURS = {"apple": (200, 30, 30), "bird": (30, 200, 30), "cloud": (30, 30, 200), "zebra": (220, 220, 220)}


def write_folder(root: Path, classes: list[str], per_class: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (40, 48, 3))
            image = np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return f"folder:{root}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    support = write_folder(root / "support", ["apple", "bird", "cloud"], 4, 0)
    test = write_folder(root / "test", list(COLOURS), 3, 1)
    return support, test


def config_for(converted, support, test, **overrides):
    spec = importlib.util.spec_from_file_location("eval_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.checkpoint = str(converted)
    config.batch_size = 5
    config.data.support, config.data.test = support, test
    config.data.known_classes = "apple,bird,cloud"
    config.data.image_size = 64
    config.scores.knn.k = 3
    config.scores.csd.k = 2
    config.update_from_flattened_dict(overrides)
    return config


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_consistent_outputs(converted, folders, tmp_path, monkeypatch):
    config = config_for(converted, *folders)
    results = run.evaluate(config, tmp_path)
    names = [
        "resend",
        "csd",
        "energy_probe",
        "knn",
        "mahalanobis",
        "maxlogit_probe",
        "msp_probe",
        "proto_cosine",
        "proto_euclid",
    ]
    assert list(results) == names
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    for name in ("report.md", "roc.png", "scores.png", "features/support.npz", "features/test.npz"):
        assert (tmp_path / name).stat().st_size > 0

    rows = read_csv(tmp_path / "scores.csv")
    assert list(rows[0]) == ["path", "label", "is_known", *names]
    assert len(rows) == 12
    assert sorted({r["label"] for r in rows}) == sorted(COLOURS)
    is_known = np.array([r["is_known"] == "1" for r in rows])
    np.testing.assert_array_equal(is_known, [r["label"] != "zebra" for r in rows])
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    for name in names:
        column = np.array([float(r[name]) for r in rows])
        expected = metrics.compute_metrics(column, is_known)
        for key in ("auroc", "fpr95", "aupr_in", "aupr_out", "n_known", "n_unknown"):
            assert results[name][key] == pytest.approx(expected[key], abs=1e-12)
        assert ("closed_set_acc" in results[name]) == (name not in ("csd", "knn"))
    assert results["resend"]["n_known"] == 9 and results["resend"]["n_unknown"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "| resend |" in report and "fpr_and_fdr_at_recall" in report

    # Rerun with other methods: the cached features are reused, nothing is embedded again.
    monkeypatch.setattr(run.features, "extract_features", lambda *a, **k: pytest.fail("re-embedded"))
    again = run.evaluate(config_for(converted, *folders, methods="knn,proto_euclid"), tmp_path)
    assert again == {name: results[name] for name in ("knn", "proto_euclid")}
    assert list(read_csv(tmp_path / "scores.csv")[0]) == ["path", "label", "is_known", "knn", "proto_euclid"]
    monkeypatch.undo()

    # Without csd no scale vectors are computed or cached; a later csd run embeds again with them.
    fresh = tmp_path / "fresh"
    assert run.evaluate(config_for(converted, *folders, methods="knn"), fresh) == {"knn": results["knn"]}
    with np.load(fresh / "features" / "support.npz") as cache:
        assert "scales" not in cache.files and cache["features"].shape == (12, 512)
    assert run.evaluate(config_for(converted, *folders, methods="csd"), fresh) == {"csd": results["csd"]}
    with np.load(fresh / "features" / "support.npz") as cache:
        assert cache["scales"].shape == (12, 6, 512)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.known_classes": "apple,bird,dragon"}, "known class 'dragon' is not in the source"),
        ({"methods": "resend,nope"}, r"unknown method\(s\) \['nope'\]"),
        ({"checkpoint": "/nonexistent"}, "--config.checkpoint=/nonexistent cannot be loaded"),
    ],
)
def test_bad_input_errors(converted, folders, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run.evaluate(config_for(converted, *folders, **overrides), tmp_path)


def test_test_set_without_unknowns(converted, folders, tmp_path):
    support, _ = folders
    with pytest.raises(ValueError, match="test set has 12 known and 0 unknown images"):
        run.evaluate(config_for(converted, support, support), tmp_path)


def test_known_class_missing_from_support(converted, tmp_path):
    support = write_folder(tmp_path / "support", ["apple", "bird"], 2, 0)
    test = write_folder(tmp_path / "test", ["apple", "bird", "cloud", "zebra"], 1, 1)
    with pytest.raises(ValueError, match="support set .*'cloud' is not in the source"):
        run.evaluate(config_for(converted, support, test), tmp_path / "out")


def test_checkpoint_of_wrong_shape(converted, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "checkpoints").symlink_to(Path(converted) / "checkpoints")
    meta = json.loads((Path(converted) / "model.json").read_text())
    meta["model"]["embed_dim"] = 96
    (wrong / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot be loaded as a ReSeND model.*does not match|shapes"):
        run.evaluate(config_for(wrong, "folder:x", "folder:y"), tmp_path / "out")


def test_preset_writes_one_table(converted, tmp_path):
    """PACS_DG from lists in the reference's format: per target, protocol.json and outputs; one table."""
    classes = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    domains = {"ArtPainting": "art_painting", "Cartoon": "cartoon", "Photo": "photo", "Sketch": "sketch"}
    lists = tmp_path / "txt_lists" / "PACS_DG"
    lists.mkdir(parents=True)
    lines = {}
    for seed, (target, domain) in enumerate(domains.items()):
        lines[target] = []
        for c, name in enumerate(classes):
            relative = f"PACS/kfold/{domain}/{name}/0.png"
            (tmp_path / "data" / relative).parent.mkdir(parents=True)
            image = np.random.default_rng([seed, c]).integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / relative)
            lines[target].append(f"{relative} {c}")
    for target in domains:
        (lists / f"{target}.txt").write_text("\n".join(lines[target]) + "\n")
        others = [line for t in domains if t != target for line in lines[t] if not line.endswith(" 6")]
        (lists / f"no_{target}.txt").write_text("\n".join(others))
    config = config_for(converted, "", "", **{"data.known_classes": "", "methods": "resend,proto_cosine"})
    config.preset, config.preset_targets = "PACS_DG", "Photo,Sketch"
    config.data.root, config.data.lists = str(tmp_path / "data"), str(tmp_path / "txt_lists")
    results = run.evaluate(config, tmp_path / "out")
    assert list(results) == ["Photo", "Sketch"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == results
    for target in results:
        assert results[target]["resend"]["n_known"] == 6 and results[target]["resend"]["n_unknown"] == 1
        assert (tmp_path / "out" / target / "scores.csv").is_file()
        protocol = json.loads((tmp_path / "out" / target / "protocol.json").read_text())
        assert protocol["support"] == {
            "lists": [f"no_{target}.txt"],
            "size": 18,
            "per_class": dict.fromkeys(classes[:6], 3),
        }
        assert protocol["test"] == {"list": f"{target}.txt", "known": 6, "unknown": 1}
    for page in ("report.md", "table.md"):
        text = (tmp_path / "out" / page).read_text()
        mean = np.mean([results[t]["resend"]["auroc"] for t in results]) * 100
        assert f"| resend | {100 * results['Photo']['resend']['auroc']:.2f} / " in text
        assert f"| {mean:.2f} / " in text
    # Without the lists the error names the flags.
    config.data.lists = ""
    with pytest.raises(ValueError, match="--config.data.lists=DIR"):
        run.evaluate(config, tmp_path / "out")


def test_command_line(converted, folders, tmp_path):
    support, test = folders
    command = [
        sys.executable,
        "-m",
        "resend_jax.evaluate",
        "--config",
        str(CONFIG),
        "--workdir",
        str(tmp_path),
        f"--config.checkpoint={converted}",
        f"--config.data.support={support}",
        f"--config.data.test={test}",
        "--config.data.known_classes=apple,bird,cloud",
        "--config.data.image_size=64",
        "--config.methods=proto_euclid,proto_cosine",
        "--config.cpu_devices=3",  # batches of 5 split over 3 devices, padded
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| proto_euclid |" in done.stdout
    assert done.stderr.count("CpuDevice(id=") == 3
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"proto_euclid", "proto_cosine"}
    # Same scores as this process's single device.
    single = config_for(converted, support, test, methods="proto_euclid,proto_cosine")
    run.evaluate(single, tmp_path / "single")
    for method in ("proto_euclid", "proto_cosine"):
        three, one = (
            np.array([float(r[method]) for r in read_csv(d / "scores.csv")])
            for d in (tmp_path, tmp_path / "single")
        )
        np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-6)
    bad = subprocess.run(
        command[:7] + ["--config.methods=nope"], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert bad.returncode != 0 and "unknown method(s) ['nope']" in bad.stderr


def test_stale_feature_caches_are_not_reused(tiny_model_dir, folders, tmp_path, monkeypatch):
    """Images changed in place (same names and count) and a checkpoint replaced at the same path
    and step both invalidate the cached features; an unchanged rerun reuses them."""
    import shutil

    from resend_jax import checkpoint

    support, _ = folders
    test_dir = tmp_path / "test"
    test = write_folder(test_dir, ["apple", "bird", "zebra"], 2, 5)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    embedded = []
    extract = run.features.extract_features
    monkeypatch.setattr(
        run.features, "extract_features", lambda *a, **k: embedded.append(k["desc"]) or extract(*a, **k)
    )
    config = config_for(model_dir, support, test, methods="proto_euclid", **{"data.image_size": 32})
    config.data.known_classes = "apple,bird"
    run.evaluate(config, tmp_path / "out")
    first = read_csv(tmp_path / "out" / "scores.csv")
    assert embedded == ["embed support", "embed test"]
    run.evaluate(config, tmp_path / "out")
    assert read_csv(tmp_path / "out" / "scores.csv") == first and len(embedded) == 2

    # The same file names, other pixels.
    for path in (test_dir / "zebra").iterdir():
        Image.fromarray(np.full((40, 48, 3), 10, np.uint8)).save(path)
    run.evaluate(config, tmp_path / "out")
    assert embedded[2:] == ["embed test"] and read_csv(tmp_path / "out" / "scores.csv") != first

    # The checkpoint replaced in place: same path, same step 0, other weights.
    import jax

    from resend_jax.inference import load_model

    variables = jax.tree.map(lambda x: np.asarray(x) * 1.5, load_model(model_dir).variables)
    shutil.rmtree(model_dir / "checkpoints")
    checkpoint.save_model_variables(model_dir, variables)
    run.evaluate(config, tmp_path / "out")
    assert embedded[3:] == ["embed support", "embed test"]


def test_one_known_class_scores_without_the_softmax(converted, caplog):
    """With one prototype the softmax is 1 everywhere; the score falls back to -logit, with a
    warning, and every method that cannot run is logged with its reason."""
    import logging

    import resend_jax
    from resend_jax.evaluate import Features, evaluate_features

    model = resend_jax.load_model(converted)
    rng = np.random.default_rng(0)
    support = Features(rng.random((6, 512)), np.zeros(6, int))
    test = Features(rng.random((8, 512)), np.array([0, 0, 0, 0, -1, -1, -1, -1]))
    with caplog.at_level(logging.INFO):
        result = evaluate_features(support, test, model=model, options={"knn": {"k": 3}})
    assert "one known class, so the softmax is constant" in caplog.text
    assert "method msp_probe skipped: it needs at least two known classes" in caplog.text
    assert "method msp skipped: it needs the network's own classifier logits" in caplog.text
    assert "method csd skipped: it needs CSD scale vectors" in caplog.text
    expected = -model.relate(test.features, np.repeat(support.features.mean(0, keepdims=True), 8, 0))
    np.testing.assert_allclose(result.scores["resend"], expected, rtol=1e-4, atol=1e-5)
    assert len(np.unique(result.scores["resend"])) == 8
