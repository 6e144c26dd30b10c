"""CSD's six scale vectors of a feature map: what ``features`` stores and ``scores.csd`` searches.

At MODE's 4x4 map (CIFAR stem, 32 px) the six are the four 2x2 quadrants (row-major), the
global pool and the centre ``[1:3, 1:3]``. Other map sizes generalise them as:
quadrants = adaptive 2x2 average pooling with PyTorch's bins (rows ``[0, ceil(h/2))`` and
``[floor(h/2), h)``, so an odd map shares its middle row and column: at 7x7 (224 px, ImageNet
stem) ``[0:4]`` and ``[3:7]``); centre = rows and columns ``[a, h - a)`` with
``a = min(floor(h/4 + 1/2), floor((h-1)/2))``, the middle half rounded (``[2:5]`` at 7x7,
the whole map at 1x1 and 2x2).
"""

import jax.numpy as jnp


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, -(-n // 2)), slice(n // 2, n)


def _centre(n: int) -> slice:
    a = min(int(n / 4 + 0.5), (n - 1) // 2)
    return slice(a, n - a)


def scale_vectors(feature_map: jnp.ndarray) -> jnp.ndarray:
    """(N, h, w, C) layer4 map -> (N, 6, C): quadrants (row-major), global, centre; pooled."""
    h, w = feature_map.shape[1:3]
    pooled = [feature_map[:, r, c].mean(axis=(1, 2)) for r in _halves(h) for c in _halves(w)]
    pooled.append(feature_map.mean(axis=(1, 2)))
    pooled.append(feature_map[:, _centre(h), _centre(w)].mean(axis=(1, 2)))
    return jnp.stack(pooled, axis=1)
