"""Input pipeline throughput: training pairs per second, and where to augment.

Rows:
- ``pipeline``: ``pair_dataset`` end to end (read, ReSeND augmentation of both images, batch)
  at 64 and 224 px with 0, 1 and 2 grain worker processes, on Fashion-MNIST (28 px IDX, in
  memory) and on a folder of 400x300 JPEGs (decode included, like ImageNet). Worker start-up
  is excluded (reported as ``startup_s``).
- ``jax_augment``: the alternative of shipping uint8 images and augmenting on the JAX device
  (a random resized crop, then ``data.device_augment``: flip / jitter / grayscale / normalise,
  jitted and vmapped). Timed on whatever ``jax.devices()[0]`` is, excluding compilation, plus the host
  work it still needs (read + resize to a fixed size so a batch stacks).

``--jpeg`` times instead the host's share of JPEG input per core (one process, no workers), at
224 px (and 64 px, not ``--quick``) on 500x375 photos (quality 90, cut from scikit-learn's two
sample photos): ``host_only`` decodes the full image and runs ``train_transform``;
``split_host`` runs ``crop_transform`` on the encoded bytes (decode at reduced size with PIL's
``draft`` where the crop allows it, random resized crop to uint8), leaving flip, jitter and
normalisation to the device. Both read a ``folder:`` source, the second with ``decode=False``;
``speedup`` is the ratio of their rates per CPU second. ``pairs_host_only`` and ``pairs_split``
run the same through ``pair_dataset`` (``augment_on`` host or device; grain's two reader threads).
"""

import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from resend_jax.data import FASHION_MNIST, device_augment, open_source, pair_dataset
from resend_jax.data.protocols import Subset
from resend_jax.data.transforms import crop_transform, train_transform

BATCH = 64


def _jpeg_folder(directory: Path, classes: int = 4, per_class: int = 32) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (directory / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            smooth = rng.integers(0, 255, (30, 40, 3), np.uint8)
            image = Image.fromarray(smooth).resize((400, 300), Image.BILINEAR)
            image.save(directory / f"class{c}" / f"{i}.jpg", quality=90)


def _photo_jpegs(directory: Path, count: int, size=(500, 375)) -> None:
    """``count`` natural-looking JPEGs of ``size`` (quality 90) in two class folders: random 4:3
    crops (60-100% of the largest) of scikit-learn's sample photos, resized, flipped, recoloured."""
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % 2]
        height = int(min(photo.height, photo.width * 3 / 4) * rng.uniform(0.6, 1.0))
        width = height * 4 // 3
        top, left = rng.integers(0, photo.height - height + 1), rng.integers(0, photo.width - width + 1)
        image = photo.resize(size, Image.BICUBIC, box=(left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32) * rng.uniform(0.8, 1.2, 3)  # colour cast
        (directory / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            directory / f"class{i % 2}" / f"{i}.jpg", quality=90
        )


def _time_jpeg_host(directory: Path, size: int, rounds: int) -> list[dict]:
    """Images per second of each host pipeline over the folder: medians of ``rounds`` rounds
    after a warm-up, the pipelines alternating round by round (as ``common.time_interleaved``).

    ``img_per_s`` is wall time, ``img_per_cpu_s`` this process's CPU time (both one thread), the
    second steadier when other jobs share the cores.
    """
    decoded = open_source(f"folder:{directory}")
    encoded = open_source(f"folder:{directory}", decode=False)
    pipelines = {
        "host_only": lambda i, rng: train_transform(decoded[i]["image"], size, rng),
        "split_host": lambda i, rng: crop_transform(encoded[i], size, rng),
    }
    times = np.zeros((rounds + 1, len(pipelines), 2))  # wall, CPU; the first round warms up
    for round_ in range(rounds + 1):
        for p, fn in enumerate(pipelines.values()):
            rng = np.random.default_rng(round_)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(len(decoded)):
                fn(i, rng)
            times[round_, p] = time.perf_counter() - wall, time.process_time() - cpu
    rows = []
    for name, (wall, cpu) in zip(pipelines, np.median(times[1:], axis=0)):
        rows.append(
            {"what": name, "source": "jpeg_500x375", "size": size, "workers": 0}
            | {"img_per_s": len(decoded) / wall, "img_per_cpu_s": len(decoded) / cpu}
        )
    rows[1]["speedup"] = rows[1]["img_per_cpu_s"] / rows[0]["img_per_cpu_s"]
    return [row | {"load_1min": os.getloadavg()[0]} for row in rows]


def _time_pipeline(source, size: int, workers: int, batches: int, augment_on: str = "host") -> dict:
    """Pairs per second after the first batch; without workers also per CPU second of this process."""
    start = time.perf_counter()
    it = pair_dataset(
        source,
        augment_on=augment_on,
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
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    it.close()
    rates = {"pairs_per_s": batches * BATCH / elapsed}
    if workers == 0:  # the workers' CPU time is not this process's
        rates["pairs_per_cpu_s"] = batches * BATCH / cpu
    return rates | {"startup_s": startup}


def _augment_one(key: jax.Array, image: jax.Array, size: int) -> jax.Array:
    """One uint8 (H, W, 3) image -> the training augmentation, float32 (size, size, 3): a random
    resized crop here (bilinear on the device, in place of the host's), then ``device_augment``."""
    crop_key, params_key = jax.random.split(key)
    keys = jax.random.split(crop_key, 4)
    h, w = image.shape[:2]
    area = jax.random.uniform(keys[0], minval=0.8, maxval=1.0)
    ratio = jnp.exp(jax.random.uniform(keys[1], minval=np.log(3 / 4), maxval=np.log(4 / 3)))
    ch = jnp.clip(jnp.sqrt(area / ratio) * h, 1, h)
    cw = jnp.clip(jnp.sqrt(area * ratio) * w, 1, w)
    top = jax.random.uniform(keys[2]) * (h - ch)
    left = jax.random.uniform(keys[3]) * (w - cw)
    scale = jnp.array([size / ch, size / cw])
    x = jax.image.scale_and_translate(
        image.astype(jnp.float32),
        (size, size, 3),
        (0, 1),
        scale,
        -jnp.array([top, left]) * scale,
        "linear",
    )
    crop = jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)
    return device_augment.augment_image(crop, device_augment.sample_params(params_key))


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
    if args.jpeg:
        with tempfile.TemporaryDirectory() as tmp:
            _photo_jpegs(Path(tmp), 32 if args.quick else 64)
            sizes = (224,) if args.quick else (224, 64)
            rows = [
                row for size in sizes for row in _time_jpeg_host(Path(tmp), size, 3 if args.quick else 10)
            ]
            for name, decode, augment_on in (
                ("pairs_host_only", True, "host"),
                ("pairs_split", False, "device"),
            ):
                source = open_source(f"folder:{tmp}", decode=decode)
                rows.append(
                    {"what": name, "source": "jpeg_500x375", "size": 224, "workers": 0}
                    | _time_pipeline(source, 224, 0, 2 if args.quick else 6, augment_on)
                )
            return rows
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
