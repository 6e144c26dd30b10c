"""JPEG input as ImageNet users have it: the synset folder layout and TFDS's ``imagenet2012``
ArrayRecord layout, each decoded and as encoded bytes (``decode=False``), on tiny sets written here."""

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder

from resend_jax.data import DataError, open_source
from resend_jax.data.transforms import crop_transform

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # the first three of TFDS's 1000 labels


def jpeg_bytes(index: int, size=(40, 30), mode="RGB") -> bytes:
    """A smooth colour ramp (JPEG keeps it close), distinct per index."""
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    ramp = 60 * x + 60 * y + np.array([10, 80, 150]) + 10 * index
    buffer = io.BytesIO()
    Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8)).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- ImageNet's folder layout ------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """``train/<synset>/<synset>_<n>.JPEG``, one CMYK JPEG among them (ImageNet has 22)."""
    root = tmp_path_factory.mktemp("imagenet")
    for label, synset in enumerate(SYNSETS):
        (root / "train" / synset).mkdir(parents=True)
        for n in range(2):
            mode = "CMYK" if (label, n) == (1, 1) else "RGB"
            (root / "train" / synset / f"{synset}_{n}.JPEG").write_bytes(jpeg_bytes(2 * label + n, mode=mode))
    return root


def test_imagenet_folder_decoded_and_encoded(imagenet_root):
    decoded = open_source(f"folder:{imagenet_root / 'train'}")
    encoded = open_source(f"folder:{imagenet_root / 'train'}", decode=False)
    assert decoded.class_names == encoded.class_names == SYNSETS
    assert decoded.labels.tolist() == encoded.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(len(decoded)):
        image, item = decoded[i], encoded[i]
        assert set(item) == {"encoded", "label", "path"} and item["path"] == image["path"]
        assert item["path"].endswith(f"{SYNSETS[item['label']]}_{i % 2}.JPEG")
        assert item["encoded"] == Path(item["path"]).read_bytes()
        assert image["image"].dtype == np.uint8 and image["image"].shape == (30, 40, 3)  # CMYK too
        np.testing.assert_array_equal(image["image"], decode(item["encoded"]))
    # What the bytes are for: a worker decodes at a reduced size (here 1/2) with PIL's draft.
    pil = Image.open(io.BytesIO(encoded[0]["encoded"]))
    pil.draft("RGB", (20, 15))
    assert pil.size == (20, 15)


def test_list_source_encoded(imagenet_root):
    (imagenet_root / "list.txt").write_text(f"train/{SYNSETS[1]}/{SYNSETS[1]}_0.JPEG 1\n")
    item = open_source(f"list:{imagenet_root / 'list.txt'}", decode=False)[0]
    assert item["label"] == 1 and item["encoded"] == jpeg_bytes(2)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*/train does not exist"):
        open_source(f"folder:{tmp_path / 'train'}", decode=False)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"/train: no class folders"):
        open_source(f"folder:{tmp_path / 'train'}")
    (tmp_path / "val").mkdir()  # ImageNet's validation archive: flat, no synset folders
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg_bytes(0))
    with pytest.raises(DataError, match=r"/val: no class folders"):
        open_source(f"folder:{tmp_path / 'val'}")
    (tmp_path / "train" / SYNSETS[0]).mkdir()
    with pytest.raises(DataError, match=rf"class folder .*/train/{SYNSETS[0]} has no images"):
        open_source(f"folder:{tmp_path / 'train'}")
    with pytest.raises(ValueError, match="decode=False is for folder:, list: and tfds:"):
        open_source("idx:fashion_mnist", decode=False)


# --- TFDS imagenet2012, prepared as ArrayRecord --------------------------------------------------


class Imagenet2012(imagenet2012_dataset_builder.Builder, skip_registration=True):
    """TFDS's own ``imagenet2012`` builder (same name, version, features, file names) fed tiny
    examples in place of the ILSVRC archives; the tests read it back through the registered one."""

    @classmethod
    def _get_pkg_dir_path(cls):  # the real builder's metadata (README, citation)
        return imagenet2012_dataset_builder.Builder._get_pkg_dir_path()

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "validation": self._generate_examples(3, 10)}

    def _generate_examples(self, n, first=0):
        for index in range(first, first + n):
            synset = SYNSETS[index % 3]
            name = f"{synset}_{index}.JPEG"
            yield name, {"image": jpeg_bytes(index), "label": synset, "file_name": name}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    Imagenet2012(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_imagenet2012_array_record_decoded_and_encoded(tfds_dir):
    builder = tfds.builder("imagenet2012", data_dir=str(tfds_dir))
    assert type(builder) is imagenet2012_dataset_builder.Builder  # what users' data is read with
    decoded = open_source("tfds:imagenet2012", data_dir=str(tfds_dir))
    encoded = open_source("tfds:imagenet2012:train", data_dir=str(tfds_dir), decode=False)
    assert len(decoded) == len(encoded) == 6
    assert len(decoded.class_names) == 1000 and decoded.class_names[:3] == SYNSETS
    assert encoded.class_names == decoded.class_names
    np.testing.assert_array_equal(decoded.labels, encoded.labels)
    written = {jpeg_bytes(i): i for i in range(6)}
    for i in range(6):
        image, item = decoded[i], encoded[i]
        assert set(item) == {"encoded", "label", "path"} and item["path"] == "imagenet2012:train#" + str(i)
        assert item["label"] == image["label"] == written[item["encoded"]] % 3  # the bytes as written
        np.testing.assert_allclose(image["image"], decode(item["encoded"]), atol=2)
    assert sorted(decoded.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    crop = crop_transform(encoded[0], 16, np.random.default_rng(0))  # what the bytes are for
    assert crop.dtype == np.uint8 and crop.shape == (16, 16, 3)


def test_imagenet2012_labels_cache(tfds_dir):
    version_dir = tfds_dir / "imagenet2012" / "5.1.0"
    validation = open_source("tfds:imagenet2012:validation", data_dir=str(tfds_dir), decode=False)
    cache = version_dir / "labels.validation.npy"
    assert cache.is_file() and np.load(cache).tolist() == validation.labels.tolist()
    assert sorted(validation.labels.tolist()) == [0, 1, 2]
    np.save(cache, np.array([2, 2, 2]))  # read back, not recomputed
    assert open_source("tfds:imagenet2012:validation", data_dir=str(tfds_dir)).labels.tolist() == [2, 2, 2]
    np.save(cache, np.array([0, 1]))
    with pytest.raises(DataError, match=r"labels.validation.npy: 2 labels for 3 records; delete it"):
        open_source("tfds:imagenet2012:validation", data_dir=str(tfds_dir))
    cache.unlink()


def test_tfds_errors_name_the_dataset(tfds_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"tfds:imagenet2012:train: no prepared dataset at .*imagenet2012"
    ):
        open_source("tfds:imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"tfds:imagenet2021:train: no dataset 'imagenet2021'"):
        open_source("tfds:imagenet2021", data_dir=str(tfds_dir))
    with pytest.raises(DataError, match=r"tfds:imagenet2012:test: .*Unknown split 'test'"):
        open_source("tfds:imagenet2012:test", data_dir=str(tfds_dir), decode=False)


def test_truncated_encoded_jpeg_loads_partially_only_when_asked(tmp_path):
    """An encoded truncated file: ``load_truncated`` sources mark their items, and the crop
    decodes it partially, as ``load_image`` does with the decoded path; otherwise it names the file."""
    (tmp_path / "a").mkdir()
    data = jpeg_bytes(0, size=(200, 150))
    (tmp_path / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    strict = open_source(f"folder:{tmp_path}", decode=False)[0]
    assert "load_truncated" not in strict
    with pytest.raises(DataError, match="cut.jpg"):
        crop_transform(strict, 32, rng)
    lenient = open_source(f"folder:{tmp_path}", decode=False, load_truncated=True)[0]
    decoded = open_source(f"folder:{tmp_path}", load_truncated=True)[0]["image"]
    crop = crop_transform(lenient, 64, np.random.default_rng(1))  # 64 px: no reduced decoding
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, crop_transform(decoded, 64, np.random.default_rng(1)))


def test_device_mode_training_batches_from_encoded_jpegs(imagenet_root):
    """``augment_on="device"`` opens a JPEG folder encoded; both pairings batch its uint8 crops."""
    from ml_collections import ConfigDict

    from resend_jax.train import resend

    config = ConfigDict(
        {
            "seed": 0,
            "batch_size": 4,
            "data": {
                "train": f"folder:{imagenet_root / 'train'}",
                "data_dir": "",
                "known_classes": "",
                "image_size": 16,
                "partners": "batch_prototypes",
                "neg_per_pos": 1,
                "class_balance": True,
                "augment": True,
                "augment_on": "device",
                "num_workers": 0,
                "load_truncated_images": False,
            },
        }
    )
    source = resend.train_source(config)
    assert "encoded" in source[0]
    for partners, key in (("batch_prototypes", "images"), ("images", "image_a")):
        config.data.partners = partners
        batch = next(iter(resend.training_data(config, source)))
        assert batch[key].dtype == np.uint8 and batch[key].shape[-3:] == (16, 16, 3)
