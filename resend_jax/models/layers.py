"""Convolution and max pooling that are fast on XLA:CPU at every map size, with lax's numbers.

Under ``runtime.jit`` XLA:CPU runs ``lax.conv_general_dilated`` as Eigen's spatial convolution,
which is fine from 4x4 maps up but collapses on smaller ones: a 3x3 convolution over a 2x2x512
map runs at about 3 GFLOP/s against 150+ on a 14x14 map, and ResNet-18 at 32 or 64 px ends in
such maps. There the convolution is written as one matmul over explicit patches (im2col),
skipping kernel taps that only ever see padding (on a 1x1 map a 3x3 convolution is its centre
tap). Max pooling as ``reduce_window`` has a ``select_and_scatter`` gradient that is several
times slower than the forward pass; here it is a max over shifted strided slices with a
first-maximum gradient, which is what ``reduce_window``'s gradient and PyTorch pick on ties.

The input gradient of a strided convolution is, in lax, a convolution over the output gradient
dilated with zeros: Eigen multiplies every zero, so stride 2 costs four times the forward
pass. Here it is ``stride**2`` unstrided convolutions, one per phase of the input grid, each
with only the kernel taps that reach that phase: the forward pass's multiply count, same numbers.
In training, each convolution's input is also kept in memory for its kernel gradient
(``_kept_in_memory``), which XLA:CPU would otherwise recompute inside a layout transpose.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Dtype = Any

# Output maps with at most this many pixels use the patch matmul; larger ones use lax's conv
# (at 4x4, Eigen's 3x3 convolution took half the time of the patch matmul; BENCHMARKS.md).
IM2COL_MAX_PIXELS = 4


def _window_slice(x: jax.Array, i: int, j: int, out_h: int, out_w: int, stride: int) -> jax.Array:
    """The (N, out_h, out_w, C) strided view of padded ``x`` seen by kernel tap (i, j)."""
    n, _, _, c = x.shape
    limit = (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c)
    return lax.slice(x, (0, i, j, 0), limit, (1, stride, stride, 1))


def _unslice(part: jax.Array, i: int, j: int, height: int, width: int, stride: int) -> jax.Array:
    """The transpose of a strided slice at offset (i, j): ``part`` put back at its pixels of a
    (N, height, width, C) map, zeros elsewhere (interior padding)."""
    rows, cols = part.shape[1:3]
    config = (
        (0, 0, 0),
        (i, height - i - (rows - 1) * stride - 1, stride - 1),
        (j, width - j - (cols - 1) * stride - 1, stride - 1),
        (0, 0, 0),
    )
    return lax.pad(part, jnp.zeros((), part.dtype), config)


def _live_taps(size: int, out: int, kernel: int, stride: int, padding: int) -> list[int]:
    """Kernel offsets along one axis that see at least one real (non-padding) input pixel."""
    return [k for k in range(kernel) if any(0 <= o * stride + k - padding < size for o in range(out))]


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    pads = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _phase_input_grad(
    grad: jax.Array,
    kernel: jax.Array,
    size: tuple[int, int],
    phase: tuple[int, int],
    stride: int,
    padding: int,
) -> jax.Array | None:
    """Input gradient at pixels ``(stride * m + phase)``: dy correlated with the taps reaching them.

    Input pixel ``i = stride * m + r`` gets ``dy[m + d] * kernel[k]`` for every tap ``k`` with
    ``k = r + padding - stride * d``; the taps of one phase have consecutive offsets ``d``, so the
    sum is an unstrided, unpadded convolution of ``dy`` cropped or padded to those offsets.
    ``None`` where no tap reaches the phase (a 1x1 kernel with stride 2) or the phase is empty.
    """
    crops, taps = [], []
    for axis, (length, r) in enumerate(zip(size, phase)):
        axis_taps = sorted(
            (k for k in range(kernel.shape[axis]) if (r + padding - k) % stride == 0),
            key=lambda k: -k,
        )
        rows = -(-(length - r) // stride)  # input pixels in this phase
        if not axis_taps or rows <= 0:
            return None
        first, last = ((r + padding - k) // stride for k in (axis_taps[0], axis_taps[-1]))
        crops.append((-first, rows - 1 + last - (grad.shape[axis + 1] - 1), 0))
        taps.append(jnp.array(axis_taps))
    source = lax.pad(grad, jnp.zeros((), grad.dtype), ((0, 0, 0), *crops, (0, 0, 0)))
    sub_kernel = jnp.swapaxes(kernel, 2, 3)[taps[0]][:, taps[1]]
    return _lax_conv(source, sub_kernel, 1, 0)


def _strided_input_grad(
    grad: jax.Array, kernel: jax.Array, input_shape: tuple[int, ...], stride: int, padding: int
) -> jax.Array:
    """The input gradient of ``_lax_conv`` with ``stride > 1``, phase by phase, interleaved back."""
    _, height, width, _ = input_shape
    dx = jnp.zeros(input_shape, grad.dtype)
    for rh in range(stride):
        for rw in range(stride):
            part = _phase_input_grad(grad, kernel, (height, width), (rh, rw), stride, padding)
            if part is not None:
                dx = dx + _unslice(part, rh, rw, height, width, stride)
    return dx


def _runtime_one(kernel: jax.Array, dtype: Dtype) -> jax.Array:
    """1.0, computed from ``kernel`` so that XLA cannot fold it away."""
    return lax.stop_gradient(1 + 0 * kernel.ravel()[0]).astype(dtype)


@jax.custom_vjp
def _kept_in_memory(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x``; under differentiation ``x / 1.0`` and ``grad * 1.0``, to keep the input in memory.

    XLA:CPU copies cheap elementwise producers (batch norm, ReLU, the residual sum) into every
    consumer, among them the transpose that lays a convolution's input out as (C, H, W, N) for
    Eigen's kernel gradient, which then recomputes them reading a whole image apart. With this
    division by a runtime 1.0 it stores the input once and the transpose reads it. The backward
    multiplies by the same 1.0: with an untouched gradient XLA copied the division into the
    transposes again, and with a division the max pool's gradient recomputed it for every tap
    (compiled HLO, docs/cpu_performance.md). Inference has no such transpose and skips it.
    """
    return x


def _kept_in_memory_fwd(x, kernel):
    one = _runtime_one(kernel, x.dtype)
    return x / one, one


def _kept_in_memory_bwd(one, grad):
    return grad * one, None


_kept_in_memory.defvjp(_kept_in_memory_fwd, _kept_in_memory_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _strided_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return _lax_conv(x, kernel, stride, padding)


def _strided_conv_fwd(x, kernel, stride, padding):
    return _lax_conv(x, kernel, stride, padding), (x, kernel)


def _strided_conv_bwd(stride, padding, residuals, grad):
    """lax's kernel gradient; the input gradient phase by phase (module docstring)."""
    x, kernel = residuals
    kernel_grad = jax.vjp(lambda k: _lax_conv(x, k, stride, padding), kernel)[1](grad)[0]
    return _strided_input_grad(grad, kernel, x.shape, stride, padding), kernel_grad


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """NHWC x HWIO convolution with symmetric zero padding; equals ``lax.conv_general_dilated``."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (w + 2 * padding - kw) // stride + 1
    if out_h * out_w > IM2COL_MAX_PIXELS:
        if jax.default_backend() == "cpu":
            x = _kept_in_memory(x, kernel)
        return (
            _lax_conv(x, kernel, stride, padding)
            if stride == 1
            else _strided_conv(x, kernel, stride, padding)
        )
    rows = _live_taps(h, out_h, kh, stride, padding)
    cols = _live_taps(w, out_w, kw, stride, padding)
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    patches = jnp.concatenate([_window_slice(x, i, j, out_h, out_w, stride) for i in rows for j in cols], -1)
    weights = kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].reshape(-1, cout)
    y = jnp.dot(patches.reshape(-1, len(rows) * len(cols) * cin), weights)
    return y.reshape(n, out_h, out_w, cout)


class Conv(nn.Module):
    """Bias-free ``nn.Conv`` with PyTorch's symmetric padding and the same ``kernel`` parameter."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)


def _pool_geometry(shape: Sequence[int], window: int, stride: int, padding: int) -> tuple[int, int]:
    _, h, w, _ = shape
    return (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1


def _pad(x: jax.Array, padding: int, value: float) -> jax.Array:
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=value)


def _max_pool_forward(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    out_h, out_w = _pool_geometry(x.shape, window, stride, padding)
    x = _pad(x, padding, -jnp.inf)
    taps = [_window_slice(x, i, j, out_h, out_w, stride) for i in range(window) for j in range(window)]
    out = taps[0]
    for tap in taps[1:]:
        out = jnp.maximum(out, tap)
    return out


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    return _max_pool_forward(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    out = _max_pool_forward(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(window, stride, padding, residuals, grad):
    """Sends each output's gradient to the first maximum of its window in row-major order."""
    x, out = residuals
    out_h, out_w = _pool_geometry(x.shape, window, stride, padding)
    xp = _pad(x, padding, -jnp.inf)
    _, hp, wp, _ = xp.shape
    dx = jnp.zeros_like(xp)
    unclaimed = jnp.ones(out.shape, bool)
    for i in range(window):
        for j in range(window):
            hit = unclaimed & (_window_slice(xp, i, j, out_h, out_w, stride) == out)
            unclaimed = unclaimed & ~hit
            dx = dx + _unslice(jnp.where(hit, grad, 0).astype(x.dtype), i, j, hp, wp, stride)
    _, h, w, _ = x.shape
    return (dx[:, padding : padding + h, padding : padding + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """NHWC max pooling with -inf padding; equals ``nn.max_pool`` in value and gradient."""
    return _max_pool(x, window, stride, padding)
