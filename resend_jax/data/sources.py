"""Random-access image sources named by a spec string: ``open_source(spec) -> Source``.

Specs (what configs and the command line use):

- ``idx:DIR[:train|test]``: MNIST-format IDX files in DIR (gzipped or not). An empty DIR or
  ``fashion_mnist`` means Debian's ``/usr/share/datasets/fashion-mnist``. Held in memory.
- ``folder:ROOT``: ``ROOT/<class>/<image>`` (``IMAGE_EXTENSIONS``: the raster formats Pillow
  decodes, any case), classes sorted by name; other files are counted in the log, per class.
  Domain benchmarks are ``folder:ROOT/<domain>``; ImageNet's ``train/<synset>/<image>.JPEG`` is
  ``folder:IMAGENET/train`` (classes: the synsets in sorted order, as TFDS's labels).
- ``list:FILE[:ROOT]``: the reference code's text lists, ``relative/path label`` per line,
  paths relative to ROOT (default: FILE's folder).
- ``tfds:NAME[:SPLIT]``: ``tfds.data_source`` over an ArrayRecord-prepared TFDS dataset in
  ``data_dir`` (never downloads), with ``image`` and ``label`` features: ``tfds:imagenet2012``
  for ImageNet prepared with ``download_and_prepare(file_format="array_record")``.

Every source follows grain's ``RandomAccessDataSource`` protocol: ``len(source)`` and
``source[i] -> {"image": uint8 (H, W, 3), "label": int, "path": str}`` (gray images get 3
channels), plus ``class_names`` and ``labels`` (int64, all labels, known without decoding any
image) that the pair sampler and the protocols use. 16-bit and float image files are scaled to
8 bits (see ``load_image``).

``open_source(spec, decode=False)`` (folder, list and tfds sources) hands out the encoded image
instead, ``{"encoded": bytes, "label": int, "path": str}``: the file's bytes, or the record's
for TFDS (JPEG for ImageNet), so that a worker decodes after choosing the crop and at reduced
size (PIL's ``Image.draft``) rather than decoding every full image here
(``transforms.crop_transform``). Image files opened with ``load_truncated`` add
``"load_truncated": True``, which the transform honours as ``load_image`` does.
"""

import contextlib
import gzip
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageFile

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_RASTER_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".jp2", ".j2k", ".avif",
)  # fmt: skip


# The raster formats this Pillow build opens (vector, video and stub formats such as EPS, MPEG
# and HDF5 left out).
IMAGE_EXTENSIONS = tuple(e for e in _RASTER_EXTENSIONS if Image.registered_extensions().get(e) in Image.OPEN)
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Bad input data: the message names the file, key or value at fault."""


@runtime_checkable
class Source(Protocol):
    """grain's ``RandomAccessDataSource`` plus the class names and all labels."""

    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{where}: label {labels[bad[0]]} at index {bad[0]} is out of range [0, {num_classes}) "
            f"({bad.size} such labels)"
        )
    return labels


# ---------------------------------------------------------------------------------------------
# IDX (MNIST format)


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory / name}[.gz] not found (IDX source in {directory})")


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one IDX file (gzipped or not) into a numpy array of its declared shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {shape} ({expected} bytes), file has {len(data) - offset}")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape)


class IdxSource:
    """An MNIST-format split held in memory as uint8 (N, H, W); channels are added per item."""

    def __init__(self, directory: str | Path, split: str = "train", class_names: list[str] | None = None):
        if split not in _IDX_PREFIX:
            raise DataError(f"IDX split must be 'train' or 'test', got {split!r}")
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"IDX directory {directory} does not exist")
        prefix = _IDX_PREFIX[split]
        images_path = _find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
        self.images = read_idx(images_path)
        labels = read_idx(labels_path)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 (N, H, W) images, got {self.images.shape}")
        if labels.shape != (len(self.images),):
            raise DataError(f"{labels_path}: {labels.shape[0]} labels for {len(self.images)} images")
        num_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
        self.labels = _check_labels(labels, num_classes, str(labels_path))
        self.class_names = list(class_names or [str(c) for c in range(num_classes)])
        self._name = images_path.name.removesuffix(".gz")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return {
            "image": np.repeat(self.images[index][..., None], 3, axis=-1),
            "label": int(self.labels[index]),
            "path": f"{self._name}#{index}",
        }


# ---------------------------------------------------------------------------------------------
# Image files (folder and list sources)


_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def pillow_loads_truncated():
    """Sets Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` for the block, then restores it.

    The lock keeps two such blocks from restoring the flag under each other (grain reads with
    threads). A decode in another thread that runs during the block sees the flag set too; the
    block is entered only to retry a truncated file, so this is a short window.
    """
    with _TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def to_uint8(pil: Image.Image, path: str | Path) -> np.ndarray:
    """A decoded PIL image -> uint8 (H, W, 3), scaling 16-bit and float images to 8 bits.

    ``I;16*`` and ``I`` (Pillow's modes for 16-bit gray PNG and TIFF) keep the high byte
    (``v >> 8``, the inverse of ``v * 257``); ``I`` values outside [0, 65535] are refused.
    ``F`` (float TIFF) is read as [0, 1], scaled by 255; other ranges are refused. Converting
    these modes with ``convert("RGB")`` clips at 255 and yields a near-binary mask.
    """
    if pil.mode in ("RGB", "L"):
        return to_rgb(np.asarray(pil))
    if pil.mode.startswith("I;16") or pil.mode == "I":
        values = np.asarray(pil)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DataError(
                f"{path}: {pil.mode} image with values in [{low}, {high}]; only 16-bit data "
                "([0, 65535]) is scaled to 8 bits: convert it to 8-bit or 16-bit first"
            )
        return to_rgb((values.astype(np.uint32) >> 8).astype(np.uint8))
    if pil.mode == "F":
        values = np.asarray(pil)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError(
                f"{path}: float image with values in [{values.min()}, {values.max()}]; float images "
                "must hold [0, 1]: convert it to 8-bit or 16-bit first"
            )
        return to_rgb(np.rint(values * 255).astype(np.uint8))
    return to_rgb(np.asarray(pil.convert("RGB")))


def _decode(path: str | Path) -> np.ndarray:
    with Image.open(path) as pil:
        pil.load()
        return to_uint8(pil, path)


def load_image(path: str | Path, load_truncated: bool = False) -> np.ndarray:
    """Decodes an image file to uint8 (H, W, 3); an unreadable file raises ``DataError``.

    ``load_truncated`` decodes a truncated file partially, as the reference's
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` does (the missing rows are gray), with Pillow's
    switch set only while such a file is retried (``pillow_loads_truncated``).
    """
    try:
        try:
            return _decode(path)
        except OSError as e:
            if not load_truncated or isinstance(e, FileNotFoundError):
                raise
        with pillow_loads_truncated():
            return _decode(path)
    except (FileNotFoundError, DataError):
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image: {e}") from e


def _is_readable_image(path: Path, load_truncated: bool = False) -> bool:
    """Whether ``load_image`` decodes the file: a full decode, since ``verify()`` misses truncation."""
    try:
        load_image(path, load_truncated)
        return True
    except DataError:
        return False


class FileSource:
    """Image files with integer labels, decoded on access or, with ``decode=False``, read as bytes.

    ``load_truncated``: see ``load_image``; ``skip_corrupt`` decodes every file once here.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        class_names: list[str],
        skip_corrupt: bool = False,
        load_truncated: bool = False,
        decode: bool = True,
    ):
        self.skipped: list[str] = []
        self.load_truncated = load_truncated
        self.decode = decode
        if skip_corrupt:
            keep = [_is_readable_image(Path(p), load_truncated) for p in paths]
            self.skipped = [p for p, k in zip(paths, keep) if not k]
            if self.skipped:
                logging.warning(
                    "skipped %d unreadable images (first: %s)", len(self.skipped), self.skipped[0]
                )
            paths = [p for p, k in zip(paths, keep) if k]
            labels = np.asarray(labels)[np.asarray(keep, bool)] if len(keep) else np.asarray(labels)
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int64)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        path = self.paths[index]
        if self.decode:
            content = {"image": load_image(path, self.load_truncated)}
        else:
            content = {"encoded": Path(path).read_bytes()}
            if self.load_truncated:
                content["load_truncated"] = True
        return content | {"label": int(self.labels[index]), "path": path}


def folder_source(
    root: str | Path, skip_corrupt: bool = False, load_truncated: bool = False, decode: bool = True
) -> FileSource:
    """``ROOT/<class>/<image>``; classes sorted by name, files sorted within a class.

    Entries that are not ``IMAGE_EXTENSIONS`` files are left out and logged, one line per class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected ROOT/<class>/<image>)")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        names = sorted(os.listdir(class_dir))
        files = [str(class_dir / f) for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]
        ignored = [f for f in names if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if ignored:
            logging.warning(
                "class folder %s: ignored %d entries that are not image files: %s",
                class_dir,
                len(ignored),
                ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else ""),
            )
        if not files:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    class_names = [d.name for d in class_dirs]
    return FileSource(paths, np.array(labels), class_names, skip_corrupt, load_truncated, decode)


def list_source(
    list_file: str | Path,
    root: str | Path | None = None,
    skip_corrupt: bool = False,
    load_truncated: bool = False,
    decode: bool = True,
) -> FileSource:
    """The reference's ``relative/path label`` lists; class c is named after its first file's folder."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"image list {list_file} does not exist")
    root = Path(root) if root else list_file.parent
    paths, labels = [], []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        relative, _, label = line.strip().rpartition(" ")
        if not relative or not label.lstrip("-").isdigit():
            raise DataError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        if int(label) < 0:
            raise DataError(f"{list_file}:{number}: label {label} is out of range (must be >= 0)")
        path = root / relative.strip()
        if not path.is_file():
            raise FileNotFoundError(f"{list_file}:{number}: image {path} does not exist")
        paths.append(str(path))
        labels.append(int(label))
    if not paths:
        raise DataError(f"image list {list_file} is empty")
    labels = np.array(labels, np.int64)
    class_names = [str(c) for c in range(int(labels.max()) + 1)]
    for path, label in zip(reversed(paths), reversed(labels)):
        class_names[label] = Path(path).parent.name
    return FileSource(paths, labels, class_names, skip_corrupt, load_truncated, decode)


# ---------------------------------------------------------------------------------------------
# TFDS (ArrayRecord)


class TfdsSource:
    """``tfds.data_source(NAME, split=SPLIT)`` with the image and label features.

    ``decode=False`` leaves the image feature encoded (``SkipDecoding``): items carry its bytes.
    Labels are read once with the image left encoded (a pass over the records) and cached as
    ``labels.<split>.npy`` beside the dataset when its folder is writable.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None, decode: bool = True):
        import tensorflow_datasets as tfds  # Heavy import, only for this source.

        spec = f"tfds:{name}:{split}"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise FileNotFoundError(
                f"{spec}: no dataset {name!r}: none prepared in data_dir={data_dir!r} and no TFDS builder "
                "of that name"
            ) from None
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"{spec}: no prepared dataset at {builder.data_dir} (data_dir={data_dir!r}); prepare it "
                "with TFDS's download_and_prepare(file_format='array_record')"
            )
        features = builder.info.features
        if "image" not in features or "label" not in features:
            raise DataError(f"{spec}: features {sorted(features)}, expected 'image' and 'label'")
        encoded = {"image": tfds.decode.SkipDecoding()}
        try:
            self.source = builder.as_data_source(split=split, decoders=None if decode else encoded)
        except (ValueError, NotImplementedError) as e:  # an unknown split, no ArrayRecord files
            raise DataError(f"{spec}: cannot read {builder.data_dir}: {e}") from e
        self.decode = decode
        self.class_names = list(features["label"].names)
        cache = Path(builder.data_dir) / f"labels.{split.replace('/', '_')}.npy"
        if cache.is_file():
            labels = np.load(cache)
        else:
            raw = builder.as_data_source(split=split, decoders=encoded) if decode else self.source
            labels = np.array([raw[i]["label"] for i in range(len(raw))], np.int64)
            try:
                np.save(cache, labels)
            except OSError:
                logging.info("cannot cache labels at %s", cache)
        if len(labels) != len(self.source):
            raise DataError(f"{cache}: {len(labels)} labels for {len(self.source)} records; delete it")
        self.labels = _check_labels(labels, len(self.class_names), spec)
        self._name = f"{name}:{split}"

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        image = self.source[index]["image"]
        if self.decode:
            content = {"image": to_rgb(np.asarray(image, np.uint8))}
        else:
            content = {"encoded": image}
        return content | {"label": int(self.labels[index]), "path": f"{self._name}#{index}"}


# ---------------------------------------------------------------------------------------------


def open_source(
    spec: str,
    *,
    data_dir: str | None = None,
    skip_corrupt: bool = False,
    load_truncated: bool = False,
    decode: bool = True,
) -> Source:
    """Opens the source a spec string names (see the module docstring).

    ``data_dir`` is the TFDS data directory; ``skip_corrupt`` drops unreadable image files
    (each decoded once when the source opens, counted in the log and in ``source.skipped``)
    instead of raising when one is read; ``load_truncated`` decodes truncated image files
    partially, as the reference does (``load_image``). Both apply to folder and list sources.
    ``decode=False``: items carry ``"encoded"`` bytes in place of ``"image"`` (not for ``idx:``,
    which holds pixels).
    """
    kind, _, rest = spec.partition(":")
    if kind == "idx":
        if not decode:
            raise ValueError(
                f"{spec}: IDX files hold pixels, not encoded images: decode=False is for "
                "folder:, list: and tfds: sources"
            )
        directory, _, split = rest.partition(":")
        if directory in ("", "fashion_mnist"):
            return IdxSource(FASHION_MNIST_DIR, split or "train", FASHION_MNIST_CLASSES)
        return IdxSource(directory, split or "train")
    if kind == "folder" and rest:
        return folder_source(rest, skip_corrupt, load_truncated, decode)
    if kind == "list" and rest:
        list_file, _, root = rest.partition(":")
        return list_source(list_file, root or None, skip_corrupt, load_truncated, decode)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return TfdsSource(name, split or "train", data_dir, decode)
    raise ValueError(
        f"bad source spec {spec!r}: expected idx:DIR[:train|test], folder:ROOT, list:FILE[:ROOT] "
        "or tfds:NAME[:SPLIT]"
    )


def describe(source: Source) -> dict[str, Any]:
    """A JSON-able summary: size and per-class counts, for logs and reports."""
    counts = np.bincount(source.labels, minlength=len(source.class_names))
    return {"size": len(source), "classes": dict(zip(source.class_names, counts.tolist()))}
