"""Image transforms on uint8 HWC numpy images, as the reference's torchvision pipeline on PIL.

- ``eval_transform(image, size)``: resize to (size, size) (bilinear, no crop), normalise.
- ``train_transform(image, size, rng)``: RandomResizedCrop(size, scale (0.8, 1)), horizontal flip
  0.5, ColorJitter(0.8, 0.8, 0.8, 0.1) with p 0.5, RandomGrayscale(0.1), normalise.
- ``normalize(images)``: uint8 -> float32 with the ImageNet mean and std, one image or a batch.
- ``renormalize(images, normalization)``: ImageNet-normalised images -> normalised with another
  entry of ``NORMALIZATIONS`` (``imagenet``, ``cifar10``), for models trained with other statistics.

Every step uses PIL exactly as torchvision does on PIL images (same resampling, same enhancers,
hue shifted in uint8 HSV, jitter factors in a random order), so the pixel statistics match the
reference. Randomness comes only from the ``np.random.Generator`` passed in, which grain seeds
per element; these run in grain's worker processes (see ``pipeline.py`` and BENCHMARKS.md).
"""

import math

import numpy as np
from PIL import Image, ImageEnhance

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

# (x / 255 - mean) / std == x * _SCALE + _OFFSET, one fused multiply-add per pixel.
_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    return np.asarray(images, np.float32) * _SCALE + _OFFSET


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


def color_jitter(pil: Image.Image, rng: np.random.Generator, strength=JITTER) -> Image.Image:
    """torchvision's ``ColorJitter``: the four adjustments in a random order, random factors."""
    brightness, contrast, saturation, hue = strength
    factors = [
        rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
        rng.uniform(-hue, hue),
    ]
    for op in rng.permutation(4):
        if op == 0:
            pil = ImageEnhance.Brightness(pil).enhance(factors[0])
        elif op == 1:
            pil = ImageEnhance.Contrast(pil).enhance(factors[1])
        elif op == 2:
            pil = ImageEnhance.Color(pil).enhance(factors[2])
        else:
            pil = _adjust_hue(pil, factors[3])
    return pil


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3) with the reference training augmentation."""
    pil = _to_pil(image)
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng)
    pil = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < FLIP_P:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < JITTER_P:
        pil = color_jitter(pil, rng)
    if rng.random() < GRAYSCALE_P:
        pil = pil.convert("L").convert("RGB")
    return normalize(np.asarray(pil))
