"""Labelled training batches of augmented views, as a grain pipeline (MODE, SupCon, ReSeND).

- ``mode_transform(image, size, rng)``: MODE's / SupContrast's training augmentation
  (REFERENCE.md section 4): RandomResizedCrop(size, scale (0.2, 1)), horizontal flip 0.5,
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale(0.2), ImageNet normalisation;
  composed from ``transforms``' torchvision-exact building blocks.
- ``view_dataset(source, *, image_size, batch_size, views, seed, ...)``: an endless
  ``grain.DatasetIterator`` of per-host batches ``{"images": float32 (B, V, S, S, 3),
  "label": int64 (B,)}``, each of the ``V`` views augmented independently by ``transform``
  (``mode_transform`` by default; ReSeND's batch-prototype pairing passes one view of
  ``train_transform``). Every epoch is a new shuffle of this process's shard
  (``source[i::n]``); batches run across epoch boundaries.
  It resumes exactly from grain's checkpoint of the iterator, as ``pair_dataset`` does.
"""

from collections.abc import Callable

import grain
import numpy as np
from PIL import Image

from resend_jax.data.pipeline import _prefetch, _process_shard, _read_options
from resend_jax.data.sources import Source
from resend_jax.data.transforms import _to_pil, color_jitter, normalize, random_resized_crop_box

CROP_SCALE = (0.2, 1.0)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P = 0.8
GRAYSCALE_P = 0.2
FLIP_P = 0.5

# (uint8 image, size, generator) -> float32 (size, size, 3); a module-level function, so it pickles.
Transform = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def crop_and_flip(image: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """RandomResizedCrop(size, CROP_SCALE) then a horizontal flip with probability FLIP_P."""
    pil = _to_pil(image)
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng, scale=CROP_SCALE)
    pil = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < FLIP_P:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    return pil


def mode_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3) with MODE's training augmentation."""
    pil = crop_and_flip(image, size, rng)
    if rng.random() < JITTER_P:
        pil = color_jitter(pil, rng, JITTER)
    if rng.random() < GRAYSCALE_P:
        pil = pil.convert("L").convert("RGB")
    return normalize(np.asarray(pil))


class _LoadViews:
    """Source index + generator -> ``views`` augmented copies of the image and its label."""

    def __init__(self, source: Source, image_size: int, views: int, transform: Transform):
        self.source = source
        self.image_size = image_size
        self.views = views
        self.transform = transform

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        item = self.source[int(index)]
        # An encoded item (``open_source(decode=False)``) goes whole to transforms that take items
        # (``transforms.crop_transform``, ``train_transform``).
        image = item["image"] if "image" in item else item
        images = [self.transform(image, self.image_size, rng) for _ in range(self.views)]
        return {"images": np.stack(images), "label": np.int64(item["label"])}


def view_dataset(
    source: Source,
    *,
    image_size: int,
    batch_size: int,
    views: int,
    seed: int,
    transform: Transform = mode_transform,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.DatasetIterator:
    """This process's endless batches of ``views`` augmented views per image (module docstring).

    ``batch_size`` is per process; sharding defaults to ``jax.process_index()`` of
    ``jax.process_count()``. Resuming needs the same arguments and the saved iterator state.
    """
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    indices = grain.MapDataset.range(len(source))[shard_index::shard_count]
    dataset = indices.shuffle(seed=seed).repeat(None)
    dataset = dataset.random_map(_LoadViews(source, image_size, views, transform), seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return iter(_prefetch(dataset.to_iter_dataset(_read_options()), num_workers))
