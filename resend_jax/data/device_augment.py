"""ReSeND's photometric training augmentation on the accelerator, as the host's PIL computes it.

With ``config.data.augment_on = "device"`` the host decodes and crops only
(``transforms.crop_transform``: uint8 (S, S, 3)) and the train step runs the rest here:
horizontal flip 0.5, ColorJitter(0.8, 0.8, 0.8, 0.1) with p 0.5 (the four adjustments in a
random order per image), RandomGrayscale(0.1) and the ImageNet normalisation.

- ``sample_params(key)``: one image's random parameters, drawn as torchvision draws them.
- ``augment_image(image, params)``: uint8 (S, S, 3) -> float32 (S, S, 3) for given parameters.
- ``augment(key, images)``: a batch, image ``i`` with ``fold_in(key, i)``: the result depends on
  the global index, not on how the batch is sharded over devices.
- The operations, on uint8 images of any leading shape: ``to_gray``, ``blend``,
  ``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``,
  ``rgb_to_hsv``, ``hsv_to_rgb``, ``grayscale``, ``normalize``.

Each operation is the one torchvision calls on PIL images, computed as Pillow's C code does and
rounded to uint8 after each, as the host path is, so the outputs equal the host's bit for bit
(tests/test_device_augment.py: every RGB and HSV value, each operation, whole chains):
``Image.blend`` (the three enhancers) as float32 ``a + factor * (b - a)`` truncated and
clipped, the gray level ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, the contrast mean
``int(mean + 0.5)``, and hue through Pillow's uint8 HSV, whose float and double expressions are
reproduced in float32 and integers. Where XLA would round otherwise, the code avoids it: a
product that feeds a sum is split into exact halves (XLA fuses multiply-adds, C rounds the
product first), divisions by constants and ``floor(255 x)`` are done on integer mantissas (XLA
multiplies by a rounded reciprocal). Data-dependent float32 divisions remain: exact where the
backend divides correctly rounded (CPU, GPU).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resend_jax.data.transforms import (
    FLIP_P,
    GRAYSCALE_P,
    JITTER,
    JITTER_P,
    NORMALIZE_OFFSET,
    NORMALIZE_SCALE,
)

Params = dict[str, jax.Array]  # sample_params' output, one image's


def to_gray(image: jax.Array) -> jax.Array:
    """uint8 (..., 3) -> int32 (...): Pillow's ``convert("L")`` (ITU-R 601-2 in 16-bit fixed point)."""
    rgb = image.astype(jnp.int32)
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def _product(factor: jax.Array, integers: jax.Array) -> jax.Array:
    """float32 ``factor * integers`` (integer values below 2^12) rounded once, as C's separate
    multiply: the factor's two 12-bit halves give exact products, so their sum rounds once
    even where XLA fuses a product and a sum into an FMA (which would skip the rounding)."""
    factor = jnp.asarray(factor, jnp.float32)
    high = lax.bitcast_convert_type(
        lax.bitcast_convert_type(factor, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32
    )
    integers = integers.astype(jnp.float32)
    return high * integers + (factor - high) * integers


def blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """Pillow's ``Image.blend(degenerate, image, factor)`` on uint8 values -> uint8: float32
    ``degenerate + factor * (image - degenerate)``, truncated, clipped to [0, 255]."""
    base = degenerate.astype(jnp.int32)
    out = base.astype(jnp.float32) + _product(factor, image.astype(jnp.int32) - base)
    return jnp.clip(jnp.trunc(out), 0, 255).astype(jnp.uint8)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Brightness``: a blend with black."""
    return blend(jnp.zeros_like(image), image, factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Contrast`` on one (H, W, 3) image: a blend with its mean gray level,
    ``int(mean + 0.5)`` of the ``L`` image (exact in int32, for images up to 2,000 px square)."""
    gray = to_gray(image)
    count = gray.size
    mean = (2 * jnp.sum(gray) + count) // (2 * count)
    return blend(jnp.full_like(image, mean), image, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``ImageEnhance.Color``: a blend with the image's ``L`` conversion."""
    return blend(grayscale(image), image, factor)


def grayscale(image: jax.Array) -> jax.Array:
    """``convert("L").convert("RGB")`` (RandomGrayscale's output): uint8 (..., 3)."""
    gray = to_gray(image).astype(jnp.uint8)
    return jnp.broadcast_to(gray[..., None], image.shape)


def _third(x: jax.Array) -> jax.Array:
    """``x / 3`` rounded to nearest for normal float32 x > 0, on the mantissa in integers: XLA
    turns a division by a constant into a product with the constant's rounded reciprocal."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    mantissa = (bits & 0x7FFFFF) | 0x800000
    large = mantissa >= 3 << 22  # the quotient's mantissa: 2 m / 3, else 4 m / 3 (one binade down)
    quotient = (jnp.where(large, 2 * mantissa, 4 * mantissa) + 1) // 3  # thirds never tie
    exponent = (bits >> 23) - jnp.where(large, 1, 2).astype(jnp.uint32)
    return lax.bitcast_convert_type((exponent << 23) | (quotient & 0x7FFFFF), jnp.float32)


# float32(n / 255) for n in 0..255, as C divides (see _third).
_BY_255 = np.arange(256, dtype=np.float32) / np.float32(255)


def _floor_255(x: jax.Array) -> jax.Array:
    """``floor(255 * x)`` exactly for float32 x in [0, 1] (C's ``(int)(x * 255.0)`` in double):
    the 24-bit mantissa times 255 fits uint32, shifted by the exponent."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    mantissa = (bits & 0x7FFFFF) | 0x800000
    shift = 150 - (bits >> 23).astype(jnp.int32)  # x = mantissa * 2^-shift, shift >= 23
    product = mantissa * jnp.uint32(255)
    floor = product >> jnp.minimum(shift, 31).astype(jnp.uint32)
    return jnp.where((x == 0) | (shift > 31), 0, floor).astype(jnp.int32)


def rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pillow's ``convert("HSV")``: uint8 (..., 3) -> int32 H, S, V (each in [0, 255]).

    Pillow computes ``s = cr / max`` and the hue's ``rc``, ``gc``, ``bc`` in float32, the
    hue's sums in double, ``fmod(h / 6 + 1, 1)`` in double stored as float32, then truncates
    ``255 *`` both. Here: the same float32 quotients and differences (one of ``rc``, ``gc``,
    ``bc`` is 1, which makes Pillow's double sums single float32 roundings); ``h / 6`` for
    ``h >= 0``; ``1 + h / 6`` for ``h < 0`` rounded in integers; the truncations on mantissas.
    """
    rgb = image.astype(jnp.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = jnp.max(rgb, axis=-1)
    spread = maxc - jnp.min(rgb, axis=-1)
    gray = spread == 0
    cr = jnp.where(gray, 1, spread).astype(jnp.float32)
    saturation = _floor_255(cr / jnp.maximum(maxc, 1).astype(jnp.float32))
    rc, gc, bc = ((maxc - c).astype(jnp.float32) / cr for c in (r, g, b))
    h = jnp.where(
        r == maxc,
        bc - gc,
        jnp.where(g == maxc, jnp.where(bc == 1, 1 + rc, 3 - bc), jnp.where(rc == 1, 3 + gc, 5 - rc)),
    )
    # h < 0 (red maximum, green minimum) is -M 2^-31 with M an integer, |h| >= 1/255; 1 + h / 6
    # lies in (5/6, 1), where float32 steps by 2^-24: round 2^24 (1 + h / 6) = 2^24 - M / 768
    # to the nearest, ties to even.
    m = jnp.where(h < 0, -h * 2.0**31, 0).astype(jnp.uint32)
    quotient, remainder = m // 768, m % 768
    rounded = quotient + ((remainder > 384) | ((remainder == 384) & (quotient % 2 == 1)))
    wrapped = (2**24 - rounded).astype(jnp.float32) * 2.0**-24
    sixth = _third(jnp.where(h > 0, h, 1.0)) * 0.5
    hue = _floor_255(jnp.where(h < 0, wrapped, jnp.where(h > 0, sixth, 0.0)))
    return jnp.where(gray, 0, hue), jnp.where(gray, 0, saturation), maxc


def _rounded_product(v: jax.Array, s: jax.Array, t: jax.Array) -> jax.Array:
    """``Y = v * fs * ft`` rounded half down, with ``fs = float32(s / 255)``,
    ``ft = float32(t / 255)`` and integers v, s, t in [0, 255]: Pillow's ``hsv2rgb`` rounds
    ``v * (1 - fs * ft)`` in double, halves away from zero, which is ``v`` minus this.

    ``Y`` comes within 2e-6 of a half integer, closer than float32 computes it. Writing
    ``fs = (s + es) / 255`` and ``ft = (t + et) / 255`` (``es``, ``et``: float32's errors times
    255, below 1e-5), ``Y > m + 1/2`` when ``J + 2 v (s et + t es + es et) > 0`` with the
    integer ``J = 2 v s t - (2 m + 1) 65025``: over all v, s, t that sum is at least 0.2 from 0,
    and its small part is good to 1e-6 in float32.
    """
    t = jnp.asarray(t, jnp.int32)
    fs, ft = jnp.asarray(_BY_255)[s], jnp.asarray(_BY_255)[t]
    vf, sf, tf = (x.astype(jnp.float32) for x in (v, s, t))
    es = (256 * fs - sf) - fs  # 255 fs - s; 256 fs - s is exact (Sterbenz)
    et = (256 * ft - tf) - ft
    m = jnp.floor(vf * fs * ft).astype(jnp.int32)  # within 1e-4 of Y: the integer below or at it
    exact = 2 * v * s * t - (2 * m + 1) * 65025
    small = 2 * vf * (sf * et + tf * es + es * et)
    return m + (exact.astype(jnp.float32) + small > 0).astype(jnp.int32)


def hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    """Pillow's HSV -> RGB conversion: int H, S, V in [0, 255] -> uint8 (..., 3).

    Sector ``i = floor(6 h / 255)`` and fraction ``f = float32((6 h mod 255) / 255)`` are exact
    in integers; ``p, q, t = round(v (1 - fs)), round(v (1 - fs f)), round(v (1 - fs (1 - f)))``
    (double, halves away from zero) come from ``_rounded_product``.
    """
    h, s, v = (x.astype(jnp.int32) for x in (h, s, v))
    sector = 6 * h // 255
    fraction = 6 * h - 255 * sector
    p = v - _rounded_product(v, s, 255)
    q = v - _rounded_product(v, s, fraction)
    t = v - _rounded_product(v, s, 255 - fraction)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    channels = [
        jnp.select([sector % 6 == k for k in range(6)], [c[channel] for c in choices]) for channel in range(3)
    ]
    rgb = jnp.where((s == 0)[..., None], v[..., None], jnp.stack(channels, axis=-1))
    return rgb.astype(jnp.uint8)


def adjust_hue(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision's PIL ``adjust_hue``: H of Pillow's HSV shifted by ``int(factor * 255)`` mod 256."""
    h, s, v = rgb_to_hsv(image)
    factor = jnp.asarray(factor, jnp.float32)
    shift = jnp.where(factor < 0, -_floor_255(-factor), _floor_255(factor))  # int() of the double
    return hsv_to_rgb((h + shift) % 256, s, v)


def normalize(image: jax.Array) -> jax.Array:
    """uint8 -> float32 ``(x / 255 - mean) / std`` (ImageNet), as ``transforms.normalize``."""
    return _product(NORMALIZE_SCALE, image) + NORMALIZE_OFFSET


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(image: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
    """torchvision's ``ColorJitter`` with drawn ``factors`` (brightness, contrast, saturation,
    hue) applied in ``order`` (a permutation of 0..3, indices into ``factors``). A scan over the
    order, so that XLA compiles each adjustment once."""
    branches = [partial(op, factor=factors[i]) for i, op in enumerate(_JITTER_OPS)]

    def apply(image: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        return lax.switch(index, branches, image), None

    return lax.scan(apply, image, order)[0]


def sample_params(key: jax.Array) -> Params:
    """One image's parameters: ``flip``, ``jitter``, ``grayscale`` (bool), ``factors`` (float32
    (4,): brightness, contrast, saturation uniform in [0.2, 1.8], hue in [-0.1, 0.1]) and
    ``order`` (int32 (4,), a uniformly random permutation: the ranks of 4 uniforms), with
    ``transforms``' probabilities. One draw of 11 uniforms (cheaper to compile than one each)."""
    u = jax.random.uniform(key, (11,))
    brightness, contrast, saturation, hue = JITTER
    low = jnp.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue])
    high = jnp.array([1 + brightness, 1 + contrast, 1 + saturation, hue])
    return {
        "flip": u[0] < FLIP_P,
        "jitter": u[1] < JITTER_P,
        "grayscale": u[2] < GRAYSCALE_P,
        "factors": low + (high - low) * u[3:7],
        "order": jnp.argsort(u[7:]).astype(jnp.int32),
    }


def augment_image(image: jax.Array, params: Params) -> jax.Array:
    """uint8 (S, S, 3) -> float32 (S, S, 3): flip, jitter, grayscale (each as ``params`` say),
    then ``normalize``. The flip commutes with the rest (all per pixel or a global mean)."""
    image = jnp.where(params["flip"], image[:, ::-1], image)
    image = jnp.where(params["jitter"], color_jitter(image, params["factors"], params["order"]), image)
    image = jnp.where(params["grayscale"], grayscale(image), image)
    return normalize(image)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """uint8 (B, S, S, 3) -> float32 (B, S, S, 3), image ``i`` augmented with ``fold_in(key, i)``."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(images.shape[0]))
    return jax.vmap(augment_image)(images, jax.vmap(sample_params)(keys))
