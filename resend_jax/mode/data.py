"""MODE's training augmentations, chosen by ``config.data.augmentation``.

- ``supcon``: SupContrast's two-view augmentation (``views.mode_transform``), for ``supcon``,
  ``joint`` and ``finetune``;
- ``ce``: ``main_ce.py``'s, the cross-entropy start point: RandomResizedCrop(size, scale
  (0.2, 1)) and a horizontal flip only.

Both normalise with ImageNet's statistics, as every pipeline of the library; the trainer and the
evaluation convert to ``config.data.normalization`` on the device (``transforms.renormalize``).
"""

import numpy as np
from PIL import Image

from resend_jax.data.transforms import _to_pil, normalize, random_resized_crop_box
from resend_jax.data.views import CROP_SCALE, FLIP_P, Transform, mode_transform


def crop_flip_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3): ``main_ce.py``'s crop and flip, normalised."""
    pil = _to_pil(image)
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng, scale=CROP_SCALE)
    pil = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < FLIP_P:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(np.asarray(pil))


AUGMENTATIONS: dict[str, Transform] = {"supcon": mode_transform, "ce": crop_flip_transform}
