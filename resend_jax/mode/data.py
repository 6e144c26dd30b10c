"""MODE's training augmentations, chosen by ``config.data.augmentation``.

- ``supcon``: SupContrast's two-view augmentation (``views.mode_transform``), for ``supcon``,
  ``joint`` and ``finetune``;
- ``ce``: ``main_ce.py``'s, the cross-entropy start point: RandomResizedCrop(size, scale
  (0.2, 1)) and a horizontal flip only.

Both normalise with ImageNet's statistics, as every pipeline of the library; the trainer and the
evaluation convert to ``config.data.normalization`` on the device (``transforms.renormalize``).
"""

import numpy as np

from resend_jax.data.transforms import normalize
from resend_jax.data.views import Transform, crop_and_flip, mode_transform


def crop_flip_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3): ``main_ce.py``'s crop and flip, normalised."""
    return normalize(np.asarray(crop_and_flip(image, size, rng)))


AUGMENTATIONS: dict[str, Transform] = {"supcon": mode_transform, "ce": crop_flip_transform}
