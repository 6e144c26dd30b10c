"""Image transforms on uint8 HWC numpy images, as the reference's torchvision pipeline on PIL.

- ``eval_transform(image, size)``: resize to (size, size) (bilinear, no crop), normalise.
- ``train_transform(image, size, rng)``: RandomResizedCrop(size, scale (0.8, 1)), horizontal flip
  0.5, ColorJitter(0.8, 0.8, 0.8, 0.1) with p 0.5, RandomGrayscale(0.1), normalise.
- ``crop_transform(item_or_image, size, rng)``: its first step only, to uint8, for
  ``config.data.augment_on = "device"`` (``device_augment`` does the rest in the train step).
  An item with ``"encoded"`` JPEG bytes is decoded after the crop is drawn, at the smallest
  JPEG scale (1/2, 1/4, 1/8, PIL's ``draft``) that keeps ``DRAFT_GAP * size`` pixels across it.
- ``normalize(images)``: uint8 -> float32 with the ImageNet mean and std, one image or a batch.
- ``renormalize(images, normalization)``: ImageNet-normalised images -> normalised with another
  entry of ``NORMALIZATIONS`` (``imagenet``, ``cifar10``), for models trained with other statistics.

Every step uses PIL exactly as torchvision does on PIL images (same resampling, same enhancers,
hue shifted in uint8 HSV, jitter factors in a random order), so the pixel statistics match the
reference; a JPEG that ``crop_transform`` decodes at reduced size is the one approximation.
Randomness comes only from the ``np.random.Generator`` passed in, which grain seeds per element;
these run in grain's worker processes (see ``pipeline.py`` and BENCHMARKS.md).
"""

import copy
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from resend_jax.data.sources import DataError, pillow_loads_truncated, to_uint8

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)  # every MODE / SupContrast script's
CIFAR10_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}

CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.8, 0.8, 0.8, 0.1)  # brightness, contrast, saturation, hue
JITTER_P = 0.5
GRAYSCALE_P = 0.1
FLIP_P = 0.5
# A JPEG decoded at reduced size keeps DRAFT_GAP times the output size across the crop, as PIL's
# thumbnail (reducing_gap=2): DCT scaling averages blocks, which blurs when the resize after it
# is small. Crops to 32 px of a 512x384 JPEG differ from the full decode's by 0.5 levels on
# average at 2, 2.3 at 1.
DRAFT_GAP = 2

# (x / 255 - mean) / std == x * NORMALIZE_SCALE + NORMALIZE_OFFSET, one multiply-add per pixel.
NORMALIZE_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)
NORMALIZE_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    return np.asarray(images, np.float32) * NORMALIZE_SCALE + NORMALIZE_OFFSET


def renormalize(images, normalization: str):
    """``normalize``d images (ImageNet statistics) -> ``(x / 255 - mean) / std`` of ``normalization``.

    A per-channel affine map, exact up to float32 rounding, on NumPy or JAX arrays: the pipelines
    normalise with ImageNet's statistics and a model trained with others converts on its device.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    if normalization == "imagenet":
        return images
    mean, std = NORMALIZATIONS[normalization]
    return images * (IMAGENET_STD / std) + (IMAGENET_MEAN - mean) / std


def _to_pil(image: np.ndarray) -> Image.Image:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return Image.fromarray(image)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3): bilinear resize (no crop), normalise."""
    pil = _to_pil(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return normalize(np.asarray(pil))


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, scale=CROP_SCALE, ratio=CROP_RATIO
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` -> (top, left, crop_height, crop_width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the largest centred crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _adjust_hue(pil: Image.Image, factor: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: shift the uint8 H channel of HSV, wrapping around."""
    h, s, v = pil.convert("HSV").split()
    shifted = (np.asarray(h, np.int16) + int(factor * 255)) % 256
    h = Image.fromarray(shifted.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def jitter_factors(rng: np.random.Generator, strength=JITTER) -> list[float]:
    """torchvision's ``ColorJitter`` factors: brightness, contrast, saturation uniform in
    ``[max(0, 1 - x), 1 + x]``, hue uniform in ``[-x, x]``."""
    brightness, contrast, saturation, hue = strength
    return [
        rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
        rng.uniform(-hue, hue),
    ]


def adjust_colors(pil: Image.Image, factors, order) -> Image.Image:
    """The four adjustments with the given ``factors`` (as ``jitter_factors``), in ``order``
    (a permutation of 0..3: brightness, contrast, saturation, hue)."""
    for op in order:
        if op == 0:
            pil = ImageEnhance.Brightness(pil).enhance(factors[0])
        elif op == 1:
            pil = ImageEnhance.Contrast(pil).enhance(factors[1])
        elif op == 2:
            pil = ImageEnhance.Color(pil).enhance(factors[2])
        else:
            pil = _adjust_hue(pil, factors[3])
    return pil


def color_jitter(pil: Image.Image, rng: np.random.Generator, strength=JITTER) -> Image.Image:
    """torchvision's ``ColorJitter``: the four adjustments in a random order, random factors."""
    factors = jitter_factors(rng, strength)
    return adjust_colors(pil, factors, rng.permutation(4))


def draft_scale(crop_height: int, crop_width: int, size: int) -> int:
    """The largest JPEG decoding reduction 1/s (s in 8, 4, 2) that leaves ``DRAFT_GAP * size``
    pixels across a crop of ``crop_height`` x ``crop_width`` full-size pixels; 1 if none does."""
    for scale in (8, 4, 2):
        if min(crop_height, crop_width) >= scale * DRAFT_GAP * size:
            return scale
    return 1


def _decode_crop(data: bytes, size: int, rng: np.random.Generator, path: str):
    """-> the decoded image (at ``draft_scale``) and the crop box in its pixels."""
    with Image.open(io.BytesIO(data)) as pil:
        width, height = pil.size
        top, left, h, w = random_resized_crop_box(height, width, rng)
        scale = draft_scale(h, w, size)
        # JPEG only (other formats return None): (W // s, H // s) makes PIL pick exactly s,
        # and full-size pixel x maps to x / s (its box is that of the full image).
        drafted = pil.draft("RGB", (width // scale, height // scale)) if scale > 1 else None
        scale = width / drafted[1][2] if drafted else 1
        pil.load()
        image = to_uint8(pil, path)
    return image, (left / scale, top / scale, (left + w) / scale, (top + h) / scale)


def _crop_encoded(
    data: bytes, size: int, rng: np.random.Generator, path: str, load_truncated: bool = False
) -> np.ndarray:
    """Reads the size from the header, draws the crop, decodes at ``draft_scale``, crops.

    ``load_truncated`` retries a truncated file with Pillow's partial decoding, as
    ``sources.load_image`` does, drawing the same crop (a copy of ``rng`` before the first try).
    """
    state = copy.deepcopy(rng.bit_generator.state)
    try:
        try:
            image, box = _decode_crop(data, size, rng, path)
        except OSError:
            if not load_truncated:
                raise
            rng.bit_generator.state = state
            with pillow_loads_truncated():
                image, box = _decode_crop(data, size, rng, path)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image: {e}") from e
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))


def crop_transform(
    item_or_image: np.ndarray | dict[str, Any], size: int, rng: np.random.Generator
) -> np.ndarray:
    """RandomResizedCrop(size, scale (0.8, 1)) -> uint8 (size, size, 3), the host's share of the
    augmentation when the device does the rest (``device_augment``).

    Takes a uint8 (H, W, 3) image, or a source item with ``"image"`` (the same) or
    ``"encoded"`` image bytes: then only the header is read before the crop is drawn on the
    full size, and a JPEG is decoded at ``draft_scale`` (its DCT scaling), the crop box mapped
    to the reduced image; converted to RGB as the sources do (``sources.to_uint8``).
    """
    if isinstance(item_or_image, dict):
        if "encoded" in item_or_image:
            item = item_or_image
            return _crop_encoded(
                item["encoded"], size, rng, item.get("path", "<bytes>"), item.get("load_truncated", False)
            )
        item_or_image = item_or_image["image"]
    pil = _to_pil(item_or_image)
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng)
    return np.asarray(pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))


def train_transform(
    item_or_image: np.ndarray | dict[str, Any], size: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 (H, W, 3) (or an item, as ``crop_transform``) -> float32 (size, size, 3) with the
    reference training augmentation."""
    pil = Image.fromarray(crop_transform(item_or_image, size, rng))
    if rng.random() < FLIP_P:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < JITTER_P:
        pil = color_jitter(pil, rng)
    if rng.random() < GRAYSCALE_P:
        pil = pil.convert("L").convert("RGB")
    return normalize(np.asarray(pil))
