"""Input pipeline throughput: training pairs per second, and where to augment.

Rows:
- ``pipeline``: ``pair_dataset`` end to end (read, ReSeND augmentation of both images, batch)
  at 64 and 224 px with 0, 1 and 2 grain worker processes, on Fashion-MNIST (28 px IDX, in
  memory) and on a folder of 400x300 JPEGs (decode included, like ImageNet). Worker start-up
  is excluded (reported as ``startup_s``).
- ``jax_augment``: the alternative of shipping uint8 images and augmenting on the JAX device
  (same crop / flip / jitter / grayscale / normalise, jitted and vmapped; hue by a YIQ
  rotation). Timed on whatever ``jax.devices()[0]`` is, excluding compilation, plus the host
  work it still needs (read + resize to a fixed size so a batch stacks).
"""

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from resend_jax.data import FASHION_MNIST, IMAGENET_MEAN, IMAGENET_STD, open_source, pair_dataset
from resend_jax.data.protocols import Subset

BATCH = 64


def _jpeg_folder(directory: Path, classes: int = 4, per_class: int = 32) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (directory / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            smooth = rng.integers(0, 255, (30, 40, 3), np.uint8)
            image = Image.fromarray(smooth).resize((400, 300), Image.BILINEAR)
            image.save(directory / f"class{c}" / f"{i}.jpg", quality=90)


def _time_pipeline(source, size: int, workers: int, batches: int) -> dict:
    start = time.perf_counter()
    it = pair_dataset(
        source,
        image_size=size,
        batch_size=BATCH,
        neg_per_pos=20,
        class_balance=True,
        seed=0,
        num_workers=workers,
        shard_index=0,
        shard_count=1,
    )
    next(it)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    it.close()
    return {"pairs_per_s": batches * BATCH / elapsed, "startup_s": startup}


def _rgb_to_gray(x: jax.Array) -> jax.Array:
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _augment_one(key: jax.Array, image: jax.Array, size: int) -> jax.Array:
    """One uint8 (H, W, 3) image -> the training augmentation, float32 (size, size, 3)."""
    keys = jax.random.split(key, 10)
    h, w = image.shape[:2]
    area = jax.random.uniform(keys[0], minval=0.8, maxval=1.0)
    ratio = jnp.exp(jax.random.uniform(keys[1], minval=np.log(3 / 4), maxval=np.log(4 / 3)))
    ch = jnp.clip(jnp.sqrt(area / ratio) * h, 1, h)
    cw = jnp.clip(jnp.sqrt(area * ratio) * w, 1, w)
    top = jax.random.uniform(keys[2]) * (h - ch)
    left = jax.random.uniform(keys[3]) * (w - cw)
    scale = jnp.array([size / ch, size / cw])
    x = jax.image.scale_and_translate(
        image.astype(jnp.float32) / 255,
        (size, size, 3),
        (0, 1),
        scale,
        -jnp.array([top, left]) * scale,
        "linear",
    )
    x = jnp.where(jax.random.bernoulli(keys[4]), x[:, ::-1], x)
    b, c, s = jax.random.uniform(keys[5], (3,), minval=0.2, maxval=1.8)
    hue = jax.random.uniform(keys[6], minval=-0.1, maxval=0.1) * 2 * np.pi
    jittered = jnp.clip(x * b, 0, 1)
    jittered = jnp.clip((jittered - _rgb_to_gray(jittered).mean()) * c + _rgb_to_gray(jittered).mean(), 0, 1)
    jittered = jnp.clip((jittered - _rgb_to_gray(jittered)) * s + _rgb_to_gray(jittered), 0, 1)
    yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rotation = jnp.array([[1, 0, 0], [0, jnp.cos(hue), -jnp.sin(hue)], [0, jnp.sin(hue), jnp.cos(hue)]])
    jittered = jnp.clip(jittered @ (jnp.linalg.inv(yiq) @ rotation @ yiq).T, 0, 1)
    x = jnp.where(jax.random.bernoulli(keys[7]), jittered, x)
    x = jnp.where(jax.random.bernoulli(keys[8], 0.1), jnp.repeat(_rgb_to_gray(x), 3, -1), x)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _time_jax_augment(source, size: int, batches: int, raw_size: int | None) -> dict:
    """Host: gather uint8 images of both sides (resized to raw_size if given); device: augment."""
    augment = jax.jit(jax.vmap(lambda k, im: _augment_one(k, im, size)))
    rng = np.random.default_rng(0)

    def host_batch():
        indices = rng.integers(0, len(source), 2 * BATCH)
        images = [source[int(i)]["image"] for i in indices]
        if raw_size:
            images = [
                np.asarray(Image.fromarray(im).resize((raw_size, raw_size), Image.BILINEAR)) for im in images
            ]
        return np.stack(images)

    key = jax.random.key(0)
    augment(jax.random.split(key, 2 * BATCH), host_batch()).block_until_ready()  # compile
    host = device = 0.0
    for step in range(batches):
        start = time.perf_counter()
        images = host_batch()
        host += time.perf_counter() - start
        start = time.perf_counter()
        augment(jax.random.split(jax.random.fold_in(key, step), 2 * BATCH), images).block_until_ready()
        device += time.perf_counter() - start
    return {"pairs_per_s": batches * BATCH / (host + device), "device_share": device / (host + device)}


def run(args) -> list[dict]:
    batches = 3 if args.quick else 12
    sizes = (64,) if args.quick else (64, 224)
    workers = (0, 1) if args.quick else (0, 1, 2)
    support, _ = FASHION_MNIST.open()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _jpeg_folder(Path(tmp))
        jpegs = open_source(f"folder:{tmp}")
        sources = {"fashion_mnist": support, "jpeg_400x300": jpegs}
        for name, source in sources.items():
            for size in sizes if name == "fashion_mnist" else sizes[-1:]:
                for n in workers:
                    rows.append(
                        {"what": "pipeline", "source": name, "size": size, "workers": n}
                        | _time_pipeline(source, size, n, batches)
                    )
                raw_size = None if isinstance(source, Subset) else 256
                rows.append(
                    {"what": "jax_augment", "source": name, "size": size, "workers": 0}
                    | {"device": jax.devices()[0].platform}
                    | _time_jax_augment(source, size, batches, raw_size)
                )
    return rows
