"""The reference's benchmarks from its official lists (both published versions), end to end.

Stand-in data trees hold a file at every path of the shared lists; the counts and class names
are checked against what the lists say (read here with a parser of their own) and against the
numbers REFERENCE.md gives.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resend_jax.data import UNKNOWN, benchmarks
from resend_jax.data.sources import DataError
from resend_jax.evaluate import Features, score_features, select_methods
from resend_jax.evaluate.scores.resend import coreset_indices
from resend_jax.inference import load_model

# The official lists are not shipped: $RESEND_LISTS, or the workspace's copy beside the checkout.
_CANDIDATES = [
    Path(__file__).parents[2] / "shared/reference/resend_lists",
    Path("/work/shared/reference/resend_lists"),
]
LISTS = Path(os.environ.get("RESEND_LISTS", next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0])))
VERSIONS = ("latest", "eccv2022")
needs_lists = pytest.mark.skipif(
    not LISTS.is_dir(), reason=f"the official lists are not at {LISTS} (set RESEND_LISTS)"
)


def read(path: Path) -> list[tuple[str, int]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(relative, int(label)) for relative, label in rows]


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory):
    """An empty file at every path of every shared list (both versions)."""
    root = tmp_path_factory.mktemp("data")
    paths = set()
    for version in VERSIONS:
        for list_file in (LISTS / version).glob("*/*.txt"):
            base = benchmarks.get(list_file.parent.name).data_root(root)
            paths.update(str(base / relative) for relative, _ in read(list_file))
    for directory in {os.path.dirname(p) for p in paths}:
        os.makedirs(directory, exist_ok=True)
    for path in paths:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
    return root


def cases():
    for version in VERSIONS:
        for name, benchmark in benchmarks.BENCHMARKS.items():
            for target in benchmark.splits:
                yield version, name, target


@needs_lists
def test_every_benchmark_and_target_matches_its_lists(standin_root):
    checked = 0
    for version, name, target in cases():
        benchmark = benchmarks.get(name)
        directory = LISTS / version / name
        support_lists, test_list = benchmark.splits[target]
        if not all((directory / f).is_file() for f in support_lists):
            missing = next(directory / f for f in support_lists if not (directory / f).is_file())
            # MultiDatasets_DG's Sources.txt is not published; DomainNet_DG is in the latest lists only.
            assert (name, version) in {("MultiDatasets_DG", "latest"), ("MultiDatasets_DG", "eccv2022")} or (
                name == "DomainNet_DG" and version == "eccv2022"
            )
            with pytest.raises(FileNotFoundError, match=str(missing if directory.is_dir() else directory)):
                benchmarks.open_benchmark(name, target, LISTS / version, standin_root)
            continue
        support, test, protocol = benchmarks.open_benchmark(name, target, LISTS / version, standin_root)
        K = benchmark.num_known
        support_rows = [row for f in support_lists for row in read(directory / f)]
        test_rows = read(directory / test_list)
        assert len(support) == protocol["support"]["size"] == len(support_rows), (version, name, target)
        assert protocol["test"]["known"] == sum(label < K for _, label in test_rows)
        assert protocol["test"]["unknown"] == sum(label >= K for _, label in test_rows)
        assert len(test) == len(test_rows) and protocol["missing"] == 0
        listed = {label: Path(p).parent.name for p, label in support_rows}
        assert protocol["known_classes"] == [listed[c] for c in range(K)] == support.class_names
        if name != "DTD":
            assert protocol["known_classes"] == list(benchmark.known_classes)
        per_class = np.bincount([label for _, label in support_rows], minlength=K)
        assert list(protocol["support"]["per_class"].values()) == per_class.tolist()
        np.testing.assert_array_equal(support.labels, [label for _, label in support_rows])
        expected_test = [label if label < K else UNKNOWN for _, label in test_rows]
        np.testing.assert_array_equal(test.labels, expected_test)
        root = standin_root / "DomainNet" if name.startswith("DomainNet") else standin_root
        assert test.source.paths[0] == str(root / test_rows[0][0])
        # The ECCV 2022 DTD and DomainNet test lists hold every support image; the later ones none.
        overlap = protocol["support_images_in_test"]
        if version == "eccv2022" and name in (
            "DTD",
            "DomainNet_IN_OUT",
            "DomainNet_Painting",
            "DomainNet_Sketch",
        ):
            assert overlap == len(support)
        else:
            assert overlap == 0
        checked += 1
    assert checked == 2 * (4 + 3 + 4 + 3 + 3 + 1) + 9  # DomainNet_DG: 9 source-target pairs, latest only


@needs_lists
def test_reference_numbers():
    """The support and test sizes REFERENCE.md gives for PACS_DG and the SS sources."""
    sizes = {}
    for target in benchmarks.PACS_TARGETS:
        directory = LISTS / "latest" / "PACS_DG"
        sizes[target] = (len(read(directory / f"no_{target}.txt")), len(read(directory / f"{target}.txt")))
    assert sizes == {
        "ArtPainting": (3124, 2048),
        "Cartoon": (3525, 2344),
        "Photo": (3450, 1670),
        "Sketch": (2533, 3929),
    }
    assert len(read(LISTS / "latest" / "PACS_SS_DG" / "Source.txt")) == 1238
    assert len(read(LISTS / "latest" / "OfficeHome_SS_DG" / "Source.txt")) == 1811


@needs_lists
def test_missing_images_fail_first_or_are_counted(standin_root, tmp_path):
    root = tmp_path / "root"
    rows = read(LISTS / "latest" / "PACS_DG" / "no_Photo.txt") + read(
        LISTS / "latest" / "PACS_DG" / "Photo.txt"
    )
    for relative, _ in rows:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).touch()
    gone = sorted({relative for relative, _ in rows})[:25]
    for relative in gone:
        (root / relative).unlink()
    with pytest.raises(DataError) as error:
        benchmarks.open_benchmark("PACS_DG", "Photo", LISTS / "latest", root)
    message = str(error.value)
    assert f"25 images of PACS_DG:Photo are missing under {root}" in message
    assert "no_Photo.txt" in message and "first 20" in message and gone[0] in message
    assert gone[20] not in message  # only the first 20 are named
    support, test, protocol = benchmarks.open_benchmark(
        "PACS_DG", "Photo", LISTS / "latest", root, skip_missing=True
    )
    assert protocol["missing"] == 25 and len(support) + len(test) == len(rows) - 25


@needs_lists
def test_wrong_lists_folder_is_named(standin_root, tmp_path):
    """A list whose known labels name other classes (e.g. another benchmark's) is refused."""
    (tmp_path / "PACS_DG").mkdir()
    for f in ("no_Photo.txt", "Photo.txt"):
        text = (LISTS / "latest" / "PACS_SS_DG" / "Source.txt").read_text()
        (tmp_path / "PACS_DG" / f).write_text(text.replace("/dog/", "/cat/"))
    with pytest.raises(DataError, match="name the classes.*'cat'.*is --config.data.lists"):
        benchmarks.open_benchmark("PACS_DG", "Photo", tmp_path, standin_root)


def test_few_shot_equals_the_reference_transcription():
    labels = np.random.default_rng(3).integers(0, 7, 300)
    names = [f"img_{i}.jpg" for i in range(300)]

    # models/data_helper.py: few_shot_subsample, transcribed.
    np_labels, np_names = np.array(labels.tolist()), np.array(names)
    indices = np.arange(len(labels))
    random_generator = np.random.default_rng(seed=42)
    new_names = []
    for lbl in set(labels.tolist()):
        mask = np_labels == lbl
        selected_ids = random_generator.choice(indices[mask], 5)
        new_names.extend(np_names[selected_ids].tolist())

    chosen = benchmarks.few_shot_indices(labels, 5, 42)
    assert [names[i] for i in chosen] == new_names
    assert len(chosen) == 35 and np.bincount(labels[chosen]).tolist() == [5] * 7


def brute_force_k_center(features: np.ndarray, n: int) -> list[int]:
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    chosen = [int(np.argmin(np.linalg.norm(features - features.mean(0), axis=1)))]
    while len(chosen) < n:
        chosen.append(int(np.argmax(distances[:, chosen].min(axis=1))))
    return chosen


def test_coreset_equals_brute_force_k_center():
    rng = np.random.default_rng(0)
    for size, n in [(40, 5), (7, 7), (100, 12)]:
        features = rng.normal(size=(size, 16)).astype(np.float32)
        assert coreset_indices(features, n).tolist() == brute_force_k_center(features, n)
    assert len(coreset_indices(features, 500)) == 100


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir)


def random_features(seed=0, classes=3, n_support=30, n_test=11):
    rng = np.random.default_rng(seed)
    support = Features(rng.random((n_support, 512)), np.arange(n_support) % classes)
    test = Features(rng.random((n_test, 512)), rng.integers(-1, classes, n_test))
    return support, test


def test_coreset_resend_equals_direct_relations(tiny_model):
    support, test = random_features()
    relate = np.array(
        [[-tiny_model.relate(t[None], s[None])[0] for s in support.features] for t in test.features]
    )
    for softmax in (True, False):
        options = {"resend": {"prototypes": "coreset", "nnk": 4, "softmax": softmax, "max_pairs": 7}}
        scores, predictions = score_features(support, test, ["resend"], model=tiny_model, options=options)[
            "resend"
        ]
        per_class = np.zeros((len(test), 3))
        for c in range(3):
            members = np.flatnonzero(support.labels == c)
            kept = members[brute_force_k_center(support.features[members], 4)]
            per_class[:, c] = relate[:, kept].max(axis=1)
        expected = per_class.max(1)
        if softmax:
            expected = (np.exp(per_class) / np.exp(per_class).sum(1, keepdims=True)).max(1)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(predictions, per_class.argmax(1))


def test_resend_knn_equals_direct_loop(tiny_model):
    support, test = random_features(1)
    relate = np.array(
        [[-tiny_model.relate(t[None], s[None])[0] for s in support.features] for t in test.features]
    )
    for k in (1, 5):
        options = {"resend_knn": {"k": k, "support_chunk": 7, "max_pairs": 9}}
        scores, predictions = score_features(
            support, test, ["resend_knn"], model=tiny_model, options=options
        )["resend_knn"]
        expected = np.sort(relate, axis=1)[:, ::-1][:, :k].mean(1)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
        assert predictions is None
    # Expensive: never part of "every method".
    assert "resend_knn" not in select_methods(None, support, test, tiny_model)


def write_images(root: Path, rows: list[tuple[str, int]]) -> None:
    """A small JPEG per class, its colour set by the label, at every listed path."""
    encoded = {}
    for relative, label in rows:
        if label not in encoded:
            colour = np.random.default_rng(label).integers(0, 255, 3)
            image = np.clip(colour + np.random.default_rng(label + 99).integers(-30, 30, (24, 24, 3)), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG")
            encoded[label] = buffer.getvalue()
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded[label])


@needs_lists
def test_officehome_dg_end_to_end(tiny_model_dir, tmp_path):
    """54 prototypes from no_Art (26 classes per source domain), a test list with 16 known classes."""
    from test_evaluate import config_for

    from resend_jax.evaluate import run

    directory = LISTS / "latest" / "OfficeHome_DG"
    support_rows, test_rows = read(directory / "no_Art.txt"), read(directory / "Art.txt")
    write_images(tmp_path / "data", support_rows + test_rows)
    config = config_for(
        tiny_model_dir, "", "", **{"data.known_classes": "", "methods": "resend,proto_cosine"}
    )
    config.update_from_flattened_dict(
        {
            "preset": "OfficeHome_DG",
            "preset_targets": "Art",
            "data.root": str(tmp_path / "data"),
            "data.lists": str(LISTS / "latest"),
            "data.image_size": 32,
            "batch_size": 64,
        }
    )
    out = tmp_path / "out"
    results = run.evaluate(config, out)
    protocol = json.loads((out / "Art" / "protocol.json").read_text())
    known_test = [label for _, label in test_rows if label < 54]
    assert protocol == {
        "benchmark": "OfficeHome_DG",
        "target": "Art",
        "known_classes": list(benchmarks.OFFICEHOME_DG_KNOWN),
        "support": {
            "lists": ["no_Art.txt"],
            "size": len(support_rows),
            "per_class": dict(
                zip(benchmarks.OFFICEHOME_DG_KNOWN, np.bincount([r[1] for r in support_rows]).tolist())
            ),
        },
        "test": {"list": "Art.txt", "known": len(known_test), "unknown": len(test_rows) - len(known_test)},
        "missing": 0,
        "few_shot": 0,
        "support_images_in_test": 0,
        "lists": str(directory),
        "root": str(tmp_path / "data"),
    }
    assert len(set(known_test)) == 16
    metrics = results["Art"]["resend"]
    assert metrics["n_known"] == len(known_test) and metrics["n_unknown"] == len(test_rows) - len(known_test)
    # Each class has its own colour: the 54-way prototype argmax finds the 16 present classes.
    assert results["Art"]["proto_cosine"]["closed_set_acc"] > 0.9
    assert json.loads((out / "metrics.json").read_text()) == results
    table = (out / "table.md").read_text()
    assert "| method | Art | average |" in table and "| resend |" in table
    for name in ("metrics.json", "scores.csv", "report.md"):
        assert (out / "Art" / name).stat().st_size > 0
    scores_csv = (out / "Art" / "scores.csv").read_text().splitlines()
    assert len(scores_csv) == len(test_rows) + 1

    # Few-shot support: 2 images per class, drawn as the reference draws them.
    config.data.few_shot = 2
    few = run.evaluate(config, tmp_path / "few")
    protocol = json.loads((tmp_path / "few" / "Art" / "protocol.json").read_text())
    assert protocol["support"]["size"] == 108 and set(protocol["support"]["per_class"].values()) == {2}
    assert few["Art"]["resend"]["n_known"] == len(known_test)
