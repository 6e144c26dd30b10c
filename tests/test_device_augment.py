"""The device half of the training augmentation (``data.device_augment``) against the host's PIL
path, the host half (``transforms.crop_transform``, JPEG decoding at reduced size), and ReSeND
training with ``config.data.augment_on = "device"``.

Tolerance: none for the device operations. They are compared for equality with Pillow: every RGB
colour (gray level, HSV), every HSV triple (back to RGB), each operation on random images at
fixed factors, and whole chains (flip, jitter in every order, grayscale, normalisation: float32
equal bit for bit). The random parameters are compared in distribution (two-sample KS tests).
"""

import io
import itertools
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from PIL.JpegImagePlugin import JpegImageFile
from scipy.stats import ks_2samp
from test_train import env_with, metric, smoke_config, train_command

from resend_jax.data import device_augment as da
from resend_jax.data import transforms

SIZE = 32
N = 400  # images of the chain and distribution tests (one compiled program for both)


def random_images(count: int = 6, size: int = 24, seed: int = 0) -> np.ndarray:
    """Uniform noise and smooth colour fields (the latter keep blends inside [0, 255])."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count // 2, size, size, 3), np.uint8)
    smooth = [
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (3, 3, 3), np.uint8)).resize((size, size), Image.BILINEAR)
        )
        for _ in range(count - count // 2)
    ]
    return np.concatenate([noise, np.stack(smooth)])


def every_byte_triple() -> np.ndarray:
    """uint8 (4096, 4096, 3): each of the 2^24 triples once."""
    values = np.arange(2**24, dtype=np.uint32)
    return (
        np.stack([values >> 16, (values >> 8) & 255, values & 255], -1)
        .astype(np.uint8)
        .reshape(4096, 4096, 3)
    )


def pil_map(images: np.ndarray, op) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(image))) for image in images])


# --- each operation, exactly ------------------------------------------------------------------


def test_gray_and_hsv_of_every_rgb_colour_match_pillow():
    colours = every_byte_triple()
    pil = Image.fromarray(colours)
    np.testing.assert_array_equal(jax.jit(da.to_gray)(colours), np.asarray(pil.convert("L")))
    hsv = np.moveaxis(np.asarray(pil.convert("HSV")), -1, 0)
    for name, ours, theirs in zip("HSV", jax.jit(da.rgb_to_hsv)(colours), hsv):
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_rgb_of_every_hsv_triple_matches_pillow():
    triples = every_byte_triple()
    rgb = Image.frombytes("HSV", (4096, 4096), triples.tobytes()).convert("RGB")
    ours = jax.jit(da.hsv_to_rgb)(triples[..., 0], triples[..., 1], triples[..., 2])
    np.testing.assert_array_equal(ours, np.asarray(rgb))


ENHANCERS = {
    "brightness": (da.adjust_brightness, ImageEnhance.Brightness),
    "contrast": (da.adjust_contrast, ImageEnhance.Contrast),
    "saturation": (da.adjust_saturation, ImageEnhance.Color),
}


@pytest.mark.parametrize("name", ENHANCERS)
def test_enhancers_match_pillow(name):
    """Interpolation (factor < 1), identity, extrapolation with clipping (> 1), the range's ends."""
    ours, enhancer = ENHANCERS[name]
    ours = jax.jit(jax.vmap(ours, in_axes=(0, None)))
    images = random_images()
    for factor in np.float32([0.2, 0.5, 0.93, 1.0, 1.37, 1.8]):
        theirs = pil_map(images, lambda pil, f=float(factor): enhancer(pil).enhance(f))
        np.testing.assert_array_equal(ours(images, factor), theirs, err_msg=f"{name} {factor}")


def test_contrast_mean_rounds_half_up():
    """Gray levels 10 and 11: Pillow's mean 10.5 becomes 11, not 10 (``int(mean + 0.5)``)."""
    image = np.array([[[10, 10, 10], [11, 11, 11]]], np.uint8)
    theirs = np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(0.0))
    np.testing.assert_array_equal(theirs, 11)
    np.testing.assert_array_equal(da.adjust_contrast(image, 0.0), theirs)


def test_hue_matches_torchvision_on_pillow():
    """``transforms._adjust_hue`` is torchvision's PIL adjust_hue (H shifted in uint8 HSV)."""
    ours = jax.jit(jax.vmap(da.adjust_hue, in_axes=(0, None)))
    images = random_images()
    # The range's ends (shifts -25 and 25), zero, and shifts of -10, 4 (0.0196 * 255 = 4.998) and 5.
    for factor in np.float32([-0.1, -0.0431, 0.0, 0.0196, 5 / 255, 0.1]):
        theirs = pil_map(images, lambda pil, f=float(factor): transforms._adjust_hue(pil, f))
        np.testing.assert_array_equal(ours(images, factor), theirs, err_msg=str(factor))


def test_grayscale_and_normalize_match_the_host():
    images = random_images()
    theirs = pil_map(images, lambda pil: pil.convert("L").convert("RGB"))
    np.testing.assert_array_equal(da.grayscale(images), theirs)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    np.testing.assert_array_equal(jax.jit(da.normalize)(levels), transforms.normalize(levels))


# --- whole chains and the random parameters ------------------------------------------------------

augment_images = jax.jit(jax.vmap(da.augment_image))


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    """A colourful uint8 (48, 64, 3) image."""
    rng = np.random.default_rng(0)
    return np.asarray(
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((64, 48), Image.BICUBIC)
    )


@pytest.fixture(scope="module")
def crops(base) -> np.ndarray:
    """N host crops (``crop_transform``) of ``base``, uint8 (N, SIZE, SIZE, 3)."""
    return np.stack([transforms.crop_transform(base, SIZE, np.random.default_rng(i)) for i in range(N)])


def host_chain(crop: np.ndarray, params: dict) -> np.ndarray:
    """``train_transform`` after its crop, with given parameters."""
    pil = Image.fromarray(crop)
    if params["flip"]:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    if params["jitter"]:
        pil = transforms.adjust_colors(pil, [float(f) for f in params["factors"]], params["order"])
    if params["grayscale"]:
        pil = pil.convert("L").convert("RGB")
    return transforms.normalize(np.asarray(pil))


def test_fixed_parameters_match_the_host_chain(crops):
    """Every on/off combination of flip, jitter and grayscale with each of the 24 orders, random
    factors."""
    rng = np.random.default_rng(1)
    params = {
        "flip": np.arange(N) % 2 == 1,
        "jitter": np.arange(N) // 2 % 2 == 1,
        "grayscale": np.arange(N) // 4 % 2 == 1,
        "factors": np.column_stack([rng.uniform(0.2, 1.8, (N, 3)), rng.uniform(-0.1, 0.1, N)]).astype(
            np.float32
        ),
        "order": np.array(list(itertools.permutations(range(4))), np.int32)[np.arange(N) // 8 % 24],
    }
    ours = np.asarray(augment_images(crops, params))
    for i in range(N):
        theirs = host_chain(crops[i], {k: v[i] for k, v in params.items()})
        np.testing.assert_array_equal(ours[i], theirs, err_msg=str({k: v[i] for k, v in params.items()}))


def statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: channel means (brightness, hue, grayscale), the spread (contrast) and the mean
    channel range (saturation; 0 for gray images)."""
    means = images.mean((1, 2))
    return {
        "mean_r": means[:, 0],
        "mean_g": means[:, 1],
        "mean_b": means[:, 2],
        "std": images.std((1, 2, 3)),
        "chroma": (images.max(-1) - images.min(-1)).mean((1, 2)),
    }


def ks_pvalues(a: dict, b: dict) -> dict[str, float]:
    return {k: float(ks_2samp(a[k], b[k]).pvalue) for k in a}


def test_random_parameters_match_the_host_distribution(base, crops):
    """N host augmentations (``train_transform``: crop, flip, jitter, grayscale) of one image
    against N device ones (``crop_transform``, then ``sample_params`` as ``augment`` draws them):
    five per-image statistics agree (two-sample KS, p > 0.002 each: 0.01 over 5 tests; the
    smallest is 0.045). The same test tells jitter with p 0.8 from the reference's 0.5
    (p < 1e-6; the smallest is 4e-9)."""
    host = np.stack(
        [transforms.train_transform(base, SIZE, np.random.default_rng(10**6 + i)) for i in range(N)]
    )
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0, impl="rbg"), jnp.arange(N))
    params = jax.jit(jax.vmap(da.sample_params))(keys)
    assert 0.4 < float(params["jitter"].mean()) < 0.6 and 0.05 < float(params["grayscale"].mean()) < 0.15
    reference = statistics(host)
    pvalues = ks_pvalues(reference, statistics(np.asarray(augment_images(crops, params))))
    assert min(pvalues.values()) > 0.01 / len(pvalues), pvalues  # Bonferroni
    more_jitter = params | {"jitter": jax.random.bernoulli(jax.random.key(1), 0.8, (N,))}
    pvalues = ks_pvalues(reference, statistics(np.asarray(augment_images(crops, more_jitter))))
    assert min(pvalues.values()) < 1e-6, pvalues


# --- the host half: crops, JPEG decoding at reduced size ---------------------------------------


def jpeg(image: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def drafted_sizes(monkeypatch) -> list:
    """The sizes PIL's JPEG ``draft`` leaves images at, call by call."""
    sizes, draft = [], JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    return sizes


def test_crop_of_an_array_an_item_and_its_bytes_agree():
    """An array, an item's ``"image"`` and (decoded at full size: no 1/2 scale keeps 64 px across
    a 48 px image) its ``"encoded"`` bytes give the same uint8 crop from the same generator."""
    data = jpeg(random_images(2, 48)[1])
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    for seed in range(5):
        expected = transforms.crop_transform(decoded, SIZE, np.random.default_rng(seed))
        assert expected.dtype == np.uint8 and expected.shape == (SIZE, SIZE, 3)
        for item in ({"image": decoded}, {"encoded": data, "path": "x.jpg"}):
            np.testing.assert_array_equal(
                transforms.crop_transform(item, SIZE, np.random.default_rng(seed)), expected
            )


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_crop_decodes_at_reduced_size(drafted_sizes, mode):
    """A 512x384 JPEG cropped to 32 px: every crop (>= 343 px across) keeps DRAFT_GAP * 32 = 64
    px at 1/4 scale, so it is decoded at 128x96. Against the full decode's crop: 0.6 levels on
    average (tolerance 1), 99% within 3 (4), at most 6 (8): DCT scaling and PIL's bilinear
    filter average slightly differently. A gray JPEG gives 3 equal channels."""
    rng = np.random.default_rng(0)
    image = np.asarray(
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).resize((512, 384), Image.BICUBIC)
    )
    data = jpeg(image, mode)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    differences = []
    for seed in range(10):
        drafted_sizes.clear()
        ours = transforms.crop_transform(
            {"encoded": data, "path": "a.jpg"}, SIZE, np.random.default_rng(seed)
        )
        assert drafted_sizes == [(128, 96)]
        assert ours.dtype == np.uint8 and ours.shape == (SIZE, SIZE, 3)
        theirs = transforms.crop_transform(full, SIZE, np.random.default_rng(seed))
        differences.append(np.abs(ours.astype(int) - theirs))
    differences = np.stack(differences)
    assert differences.mean() < 1 and np.percentile(differences, 99) <= 4 and differences.max() <= 8
    if mode == "L":
        assert (ours == ours[..., :1]).all()


def test_draft_scale_keeps_the_gap():
    assert transforms.DRAFT_GAP == 2
    assert transforms.draft_scale(343, 400, 32) == 4 and transforms.draft_scale(512, 600, 32) == 8
    assert transforms.draft_scale(255, 300, 32) == 2 and transforms.draft_scale(127, 300, 32) == 1
    assert transforms.draft_scale(400, 500, 224) == 1


def test_undecodable_bytes_name_the_item():
    from resend_jax.data import DataError

    with pytest.raises(DataError, match="broken.jpg"):
        transforms.crop_transform(
            {"encoded": b"not an image", "path": "broken.jpg"}, SIZE, np.random.default_rng(0)
        )


# --- training ----------------------------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from resend_jax.train.resend import augment_batch

    rng = np.random.default_rng(0)
    batch = {
        "image_a": rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
        "image_b": rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
        "images": rng.integers(0, 256, (8, 1, 32, 32, 3), np.uint8),
    }
    key = jax.random.PRNGKey(0)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    spread = jax.jit(augment_batch)(sharded, key)
    assert len(spread["images"].sharding.device_set) == 4
    single = jax.jit(augment_batch)(jax.device_put(batch, jax.devices()[0]), key)
    outputs = {f"4/{k}": v for k, v in spread.items()} | {f"1/{k}": v for k, v in single.items()}
    np.savez(sys.argv[1], **outputs)
    """
)


def sharded_job(background, directory: Path):
    out = directory / "augmented.npz"
    background.finish(background.popen([sys.executable, "-c", SHARDED, str(out)], env_with(4)))
    return np.load(out)


def device_training_job(background, directory: Path) -> Path:
    flags = {"total_steps": 2, "checkpoint_every": 2, "data.augment_on": "device"}
    background.finish(background.popen(train_command(directory, **flags), env_with(2)))
    return directory


BACKGROUND_JOBS = {"device_augment:sharded": sharded_job, "device_augment:train": device_training_job}


@pytest.mark.background("device_augment:sharded")
def test_augmented_batch_does_not_depend_on_the_device_count(background):
    """``augment_batch`` over 4 devices equals it on one, for image pairs and views."""
    out = background.result("device_augment:sharded")
    for key in ("image_a", "image_b", "images"):
        assert out[f"4/{key}"].dtype == np.float32
        np.testing.assert_array_equal(out[f"4/{key}"], out[f"1/{key}"], err_msg=key)
    assert not np.array_equal(out["4/image_a"], out["4/image_b"])


def test_device_augmentation_data_is_uint8_crops():
    """With ``augment_on="device"`` both kinds of batches hold uint8 crops, and the dry run
    compiles the step for them; any other value is refused before data is opened."""
    from resend_jax.train.dry_run import abstract_batch
    from resend_jax.train.resend import check_options, train_source, training_data

    for partners, key, shape in [
        ("batch_prototypes", "images", (16, 1, 32, 32, 3)),
        ("images", "image_a", (16, 32, 32, 3)),
    ]:
        config = smoke_config(**{"data.augment_on": "device", "data.partners": partners})
        batch = next(training_data(config, train_source(config)))
        assert batch[key].dtype == np.uint8 and batch[key].shape == shape, partners
        assert abstract_batch(config, 16)[key].dtype == np.uint8
        config.data.augment = False  # eval transforms on the host: float32 whatever augment_on says
        assert next(training_data(config, train_source(config)))[key].dtype == np.float32
    with pytest.raises(ValueError, match="augment_on must be one of"):
        check_options(smoke_config(**{"data.augment_on": "gpu"}))


@pytest.mark.background("device_augment:train")
def test_resend_trains_with_device_augmentation(background):
    """The smoke config (Fashion-MNIST, batch prototypes) on two devices with
    ``augment_on="device"``: two steps with finite losses."""
    workdir = background.result("device_augment:train")
    assert metric(workdir, "step") == [1, 2] and np.isfinite(metric(workdir, "loss")).all()
