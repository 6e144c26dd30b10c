"""Data layer: sources, bad input, transforms, protocols, pair sampling and its checkpointing."""

import gzip
import io

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resend_jax.data import (
    FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNKNOWN,
    DataError,
    OpenSetProtocol,
    class_indices,
    eval_batches,
    eval_transform,
    is_known,
    known_subset,
    normalize,
    open_source,
    pair_dataset,
    pairs_per_epoch,
    train_transform,
)
from resend_jax.data.pipeline import epoch_pairs
from resend_jax.data.protocols import parse_classes
from resend_jax.data.sources import IdxSource
from resend_jax.data.transforms import random_resized_crop_box

# A small IDX dataset: image i is constant with value i, so a pair's images name their indices.
N = 64
LABELS = np.array([0] * 24 + [1] * 16 + [2] * 16 + [3] * 8, np.uint8)


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None], (N, 8, 8))
    write_idx(directory / "train-images-idx3-ubyte", images, gz=True)
    write_idx(directory / "train-labels-idx1-ubyte", LABELS, gz=False)
    write_idx(directory / "t10k-images-idx3-ubyte", images[:10], gz=False)
    write_idx(directory / "t10k-labels-idx1-ubyte", LABELS[:10], gz=True)
    return directory


@pytest.fixture(scope="module")
def idx_source(idx_dir):
    return open_source(f"idx:{idx_dir}")


def indices_of(images: np.ndarray) -> np.ndarray:
    """Constant eval-transformed images -> the pixel value = the source index."""
    return np.round((images[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).astype(int)


def save_image(path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt)


# --- sources -----------------------------------------------------------------------------------


def test_fashion_mnist_debian_files():
    train, test = open_source("idx:"), open_source("idx:fashion_mnist:test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_names == FASHION_MNIST_CLASSES and train.class_names[9] == "Ankle boot"
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    item = test[123]
    assert item["image"].shape == (28, 28, 3) and item["image"].dtype == np.uint8
    assert item["label"] == test.labels[123] and item["path"] == "t10k-images-idx3-ubyte#123"
    np.testing.assert_array_equal(item["image"][..., 0], item["image"][..., 2])


def test_idx_source_gz_and_plain(idx_source, idx_dir):
    assert len(idx_source) == N and idx_source.class_names == ["0", "1", "2", "3"]
    assert idx_source[37]["image"].shape == (8, 8, 3) and int(idx_source[37]["image"].max()) == 37
    test = open_source(f"idx:{idx_dir}:test")
    assert len(test) == 10 and test.labels.tolist() == LABELS[:10].tolist()


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    color = rng.integers(0, 255, (6, 5, 3), np.uint8)
    gray = rng.integers(0, 255, (4, 7), np.uint8)
    save_image(tmp_path / "zebra" / "a.PNG", color, "PNG")
    save_image(tmp_path / "zebra" / "b.bmp", gray, "BMP")
    save_image(tmp_path / "ant" / "c.JPEG", color, "JPEG")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    source = open_source(f"folder:{tmp_path}")
    assert source.class_names == ["ant", "zebra"] and source.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(source[1]["image"], color)
    np.testing.assert_array_equal(source[2]["image"], np.repeat(gray[..., None], 3, -1))
    assert source[0]["image"].shape == (6, 5, 3) and source[2]["path"].endswith("b.bmp")


def test_list_source(tmp_path):
    images = tmp_path / "images"
    save_image(images / "cat" / "1.png", np.full((3, 3, 3), 10, np.uint8), "PNG")
    save_image(images / "dog" / "2.png", np.full((3, 3), 20, np.uint8), "PNG")
    save_image(images / "dog" / "3.jpg", np.full((3, 3, 3), 30, np.uint8), "JPEG")
    lines = "cat/1.png 0\ndog/2.png 1\n\ndog/3.jpg 1\n"
    (tmp_path / "list.txt").write_text(lines)
    source = open_source(f"list:{tmp_path / 'list.txt'}:{images}")
    assert len(source) == 3 and source.labels.tolist() == [0, 1, 1]
    assert source.class_names == ["cat", "dog"]
    assert source[1]["image"].shape == (3, 3, 3) and int(source[1]["image"][0, 0, 2]) == 20


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """A 3-class TFDS dataset; images are PNG bytes already, so no TensorFlow is needed."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(np.full((5, 4, 3), 10 * i + i % 3, np.uint8)).save(buffer, "PNG")
            buffer.seek(0)
            yield i, {"image": buffer, "label": i % 3}


def test_tfds_array_record_source(tmp_path):
    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = open_source("tfds:tiny_images", data_dir=str(tmp_path))
    assert len(source) == 7 and source.class_names == ["red", "green", "blue"]
    assert sorted(source.labels.tolist()) == [0, 0, 0, 1, 1, 2, 2]
    values = sorted(int(source[i]["image"][0, 0, 0]) for i in range(7))
    assert values == [10 * i + i % 3 for i in range(7)]
    for i in range(7):
        assert int(source[i]["image"][0, 0, 0]) % 10 == source.labels[i] == source[i]["label"]
    assert source[0]["image"].shape == (5, 4, 3)
    assert len(open_source("tfds:tiny_images:test", data_dir=str(tmp_path))) == 3
    assert (tmp_path / "tiny_images" / "1.0.0" / "labels.train.npy").is_file()  # cached labels
    np.testing.assert_array_equal(
        open_source("tfds:tiny_images", data_dir=str(tmp_path)).labels, source.labels
    )


# --- bad input ---------------------------------------------------------------------------------


def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_source(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        open_source(f"idx:{tmp_path}")
    (tmp_path / "list.txt").write_text("a/missing.png 0\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt:1: image .*missing.png"):
        open_source(f"list:{tmp_path / 'list.txt'}")
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        open_source("tfds:no_such_dataset", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="bad source spec 'hdf5:x'"):
        open_source("hdf5:x")


def test_empty_class_folder(tmp_path):
    save_image(tmp_path / "a" / "1.png", np.zeros((2, 2, 3), np.uint8), "PNG")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder .*/b has no images"):
        open_source(f"folder:{tmp_path}")


def test_corrupt_image_error_and_skip(tmp_path):
    save_image(tmp_path / "a" / "good.png", np.zeros((2, 2, 3), np.uint8), "PNG")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    save_image(tmp_path / "b" / "good.png", np.zeros((2, 2, 3), np.uint8), "PNG")
    source = open_source(f"folder:{tmp_path}")
    assert len(source) == 3
    with pytest.raises(DataError, match=r"bad.jpg: cannot decode image"):
        source[0]
    skipping = open_source(f"folder:{tmp_path}", skip_corrupt=True)
    assert len(skipping) == 2 and skipping.labels.tolist() == [0, 1]
    assert len(skipping.skipped) == 1 and skipping.skipped[0].endswith("bad.jpg")


def test_label_out_of_range(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 12, 3], np.uint8), gz=False)
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte: label 12 at index 1 is out of range \[0, 10\)"
    ):
        IdxSource(tmp_path, "train", FASHION_MNIST_CLASSES)
    save_image(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8), "PNG")
    (tmp_path / "list.txt").write_text("x.png 0\nx.png -2\n")
    with pytest.raises(DataError, match=r"list.txt:2: label -2 is out of range"):
        open_source(f"list:{tmp_path / 'list.txt'}")


def test_known_class_absent(idx_source):
    with pytest.raises(DataError, match="known class 'Sandal' is not in the source"):
        class_indices(idx_source, ["0", "Sandal"])
    with pytest.raises(DataError, match="known class index 7 is out of range"):
        class_indices(idx_source, [1, 7])
    assert class_indices(idx_source, ["3", 1]) == [3, 1]


# --- transforms --------------------------------------------------------------------------------


def test_normalize_and_eval_transform():
    np.testing.assert_allclose(
        normalize(np.array([0, 255], np.uint8)[:, None].repeat(3, 1))[1],
        (1 - IMAGENET_MEAN) / IMAGENET_STD,
        rtol=1e-6,
    )
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 10:] = 200
    out = eval_transform(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(out[5, 15], (200 / 255 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    batch = normalize(np.stack([image, image]))
    assert batch.shape == (2, 10, 20, 3) and batch.dtype == np.float32


def test_random_resized_crop_scale():
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_crop_box(100, 120, rng) for _ in range(500)])
    area = boxes[:, 2] * boxes[:, 3] / (100 * 120)
    assert area.min() >= 0.78 and area.max() <= 1.0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 100).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 120).all()


def test_train_transform_is_seeded():
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)
    a = train_transform(image, 32, np.random.default_rng(5))
    b = train_transform(image, 32, np.random.default_rng(5))
    outputs = np.stack([train_transform(image, 32, np.random.default_rng(s)) for s in range(100)])
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert len({o.tobytes() for o in outputs}) >= 90  # a few draws: full crop, no flip, no jitter
    gray = (
        np.abs(
            outputs[..., 0]
            - outputs[..., 1] * IMAGENET_STD[1] / IMAGENET_STD[0]
            - (IMAGENET_MEAN[1] - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        ).max(axis=(1, 2))
        < 1e-4
    )
    assert 2 <= gray.sum() <= 25  # RandomGrayscale(0.1)


# --- protocols ---------------------------------------------------------------------------------


def test_fashion_mnist_protocol():
    support, test = FASHION_MNIST.open()
    assert len(support) == 36000 and support.class_names == FASHION_MNIST_CLASSES[:6]
    assert np.bincount(support.labels).tolist() == [6000] * 6
    assert len(test) == 10000 and int(is_known(test.labels).sum()) == 6000
    assert int((test.labels == UNKNOWN).sum()) == 4000
    item = test[int(np.flatnonzero(test.labels == UNKNOWN)[0])]
    assert item["label"] == UNKNOWN and item["image"].shape == (28, 28, 3)


def test_known_subset_by_name_and_index(idx_source):
    by_name = known_subset(idx_source, ["2", "0"])
    by_index = known_subset(idx_source, [2, 0])
    assert len(by_name) == 40 and by_name.class_names == ["2", "0"]
    np.testing.assert_array_equal(by_name.labels, by_index.labels)
    assert np.bincount(by_name.labels).tolist() == [16, 24]
    assert by_name[0]["label"] == 1 and int(by_name[0]["image"].max()) == 0


def test_parse_classes():
    assert parse_classes("0, 1,dog") == ["0", "1", "dog"]
    assert parse_classes(["Bag", 3]) == ["Bag", 3]


def test_known_classes_resolved_on_the_support_and_mapped_by_name(tmp_path):
    """Indices name the support's classes; the test set, with other classes, is labelled by name."""
    for root, classes in [
        ("support", ["sandal", "trouser", "tshirt"]),
        ("test", ["bag", "boot", "sandal", "trouser", "tshirt"]),
    ]:
        for c, name in enumerate(classes):
            save_image(tmp_path / root / name / "0.png", np.full((4, 4, 3), c, np.uint8), "PNG")
    protocol = OpenSetProtocol(
        "shoes", (f"folder:{tmp_path / 'support'}",), f"folder:{tmp_path / 'test'}", ("0", "1", "2")
    )
    support, test = protocol.open()
    assert support.class_names == test.class_names == ["sandal", "trouser", "tshirt"]
    names = [test.source.class_names[c] for c in test.source.labels]
    assert dict(zip(names, test.labels.tolist())) == {
        "bag": UNKNOWN,
        "boot": UNKNOWN,
        "sandal": 0,
        "trouser": 1,
        "tshirt": 2,
    }
    # Folders named 1/ 2/ 10/: a name that is a class wins over an index.
    for name in ("1", "2", "10"):
        save_image(tmp_path / "digits" / name / "0.png", np.zeros((4, 4, 3), np.uint8), "PNG")
    digits = open_source(f"folder:{tmp_path / 'digits'}")
    assert digits.class_names == ["1", "10", "2"]
    assert known_subset(digits, parse_classes("1,2")).class_names == ["1", "2"]
    assert known_subset(digits, parse_classes("0")).class_names == ["1"]  # not a name: an index


# --- pairs -------------------------------------------------------------------------------------


def test_epoch_pairs_classes_and_share(idx_source):
    labels = idx_source.labels
    for balance, anchors in ((False, N), (True, 4 * 24)):
        pairs = epoch_pairs(labels, 0, seed=1, neg_per_pos=3, class_balance=balance)
        assert len(pairs["a"]) == anchors * 4 == pairs_per_epoch(labels, 3, balance)
        same = labels[pairs["a"]] == labels[pairs["b"]]
        np.testing.assert_array_equal(same, pairs["target"] == 0)
        assert pairs["target"].sum() * 4 == len(pairs["a"]) * 3  # positives: exactly 1/(1+3)
        per_class = np.bincount(labels[pairs["a"]]) // 4
        assert per_class.tolist() == ([24] * 4 if balance else [24, 16, 16, 8])


def test_new_epoch_new_partners_same_seed_same_pairs(idx_source):
    args = dict(seed=3, neg_per_pos=2, class_balance=False)
    e0 = epoch_pairs(idx_source.labels, 0, **args)
    again = epoch_pairs(idx_source.labels, 0, **args)
    e1 = epoch_pairs(idx_source.labels, 1, **args)
    for k in e0:
        np.testing.assert_array_equal(e0[k], again[k])
    order0, order1 = np.lexsort((e0["b"], e0["a"])), np.lexsort((e1["b"], e1["a"]))
    assert (e0["b"][order0] != e1["b"][order1]).mean() > 0.5
    other = epoch_pairs(idx_source.labels, 0, **{**args, "seed": 4})
    assert (e0["a"] != other["a"]).mean() > 0.5


def test_shards_are_disjoint_and_cover_the_epoch(idx_source):
    args = dict(seed=0, neg_per_pos=1, class_balance=False, shard_count=2)
    shards = [epoch_pairs(idx_source.labels, 5, shard_index=i, **args) for i in range(2)]
    anchors = [set(s["a"].tolist()) for s in shards]
    assert not anchors[0] & anchors[1]
    assert anchors[0] | anchors[1] == set(range(N)) and len(anchors[0]) == N // 2


def test_pair_batches_content_and_determinism(idx_source):
    args = dict(image_size=16, batch_size=16, neg_per_pos=3, class_balance=False, seed=7, augment=False)
    it = pair_dataset(idx_source, shard_index=0, shard_count=1, num_epochs=1, **args)
    batches = list(it)
    assert len(batches) == N * 4 // 16
    a = np.concatenate([indices_of(b["image_a"]) for b in batches])
    b = np.concatenate([indices_of(b["image_b"]) for b in batches])
    target = np.concatenate([b["target"] for b in batches])
    assert batches[0]["image_a"].shape == (16, 16, 16, 3) and target.dtype == np.float32
    np.testing.assert_array_equal(target, (idx_source.labels[a] != idx_source.labels[b]).astype(np.float32))
    assert target.sum() == 3 * N and sorted(set(a.tolist())) == list(range(N))
    table = epoch_pairs(idx_source.labels, 0, seed=7, neg_per_pos=3, class_balance=False)
    np.testing.assert_array_equal(a, table["a"])
    again = next(pair_dataset(idx_source, shard_index=0, shard_count=1, **args))
    np.testing.assert_array_equal(again["image_b"], batches[0]["image_b"])


def test_augmented_pairs_are_independent_and_seeded(idx_dir):
    source = open_source(f"idx:{idx_dir}")
    args = dict(
        image_size=16, batch_size=8, neg_per_pos=1, class_balance=True, seed=2, shard_index=0, shard_count=1
    )
    x, y = next(pair_dataset(source, **args)), next(pair_dataset(source, **args))
    np.testing.assert_array_equal(x["image_a"], y["image_a"])
    z = next(pair_dataset(source, **{**args, "seed": 3}))
    assert not np.array_equal(x["image_a"], z["image_a"])
    assert x["image_a"].shape == (8, 16, 16, 3) and np.isfinite(x["image_a"]).all()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterator_state_restores_the_next_batch(idx_source, tmp_path, num_workers):
    args = dict(image_size=16, batch_size=8, neg_per_pos=2, class_balance=True, seed=11)
    args |= dict(shard_index=0, shard_count=1, num_workers=num_workers)
    steps = 40  # beyond one epoch (4 * 24 * 3 / 8 = 36 batches)
    reference = pair_dataset(idx_source, **args)
    expected = [next(reference) for _ in range(steps + 3)][steps:]
    reference.close()

    it = pair_dataset(idx_source, **args)
    for _ in range(steps):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(steps, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    it.close()

    restored = pair_dataset(idx_source, **args)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(steps, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    for want in expected:
        got = next(restored)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    restored.close()


def test_eval_batches_order_and_workers(idx_source):
    batches = list(eval_batches(idx_source, 12, 24))
    assert [len(b["label"]) for b in batches] == [24, 24, 16]
    np.testing.assert_array_equal(np.concatenate([indices_of(b["image"]) for b in batches]), np.arange(N))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), idx_source.labels)
    assert batches[2]["path"][-1] == f"train-images-idx3-ubyte#{N - 1}"
    with_worker = list(eval_batches(idx_source, 12, 24, num_workers=1))
    np.testing.assert_array_equal(with_worker[1]["image"], batches[1]["image"])
