"""MODE's recipe details: torch-default init, CIFAR-10 normalisation, schedules and augmentations."""

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resend_jax.data.transforms import normalize, renormalize
from resend_jax.data.views import mode_transform
from resend_jax.mode import train
from resend_jax.mode.data import crop_flip_transform
from resend_jax.mode.evaluate import embed_function
from resend_jax.mode.model import MODENet, torch_linear

CONFIGS = Path(__file__).parent.parent / "configs"
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
COLOUR = (200, 100, 50)


def get_config(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_torch_linear_init_bounds_and_moments():
    # torch.nn.Linear: kaiming_uniform(a = sqrt 5) weights and U(+-1/sqrt(fan_in)) biases: uniform
    # on (-b, b), b = 1/sqrt(fan_in), standard deviation b / sqrt(3).
    fan_in = 16
    params = torch_linear(4096, fan_in).init(jax.random.PRNGKey(0), jnp.zeros((1, fan_in)))["params"]
    bound = fan_in**-0.5
    for values in (params["kernel"], params["bias"]):
        values = np.asarray(values)
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound
        assert abs(values.mean()) < 0.02 * bound
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)


@pytest.fixture(scope="module")
def modenet():
    """MODENet for 5 classes and its variables from ``init`` (one compilation for the module)."""
    model = MODENet(num_classes=5)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_modenet_linear_layers_use_torch_init(modenet):
    params = modenet[1]["params"]
    layers = {
        "head/fc1": params["head"]["fc1"],
        "head/fc2": params["head"]["fc2"],
        "classifier": params["classifier"],
        **{f"{p}/{fc}": params[p][fc] for p in train.PROJECTORS for fc in ("fc1", "fc2")},
    }
    for name, layer in layers.items():
        kernel = np.asarray(layer["kernel"])
        bound = kernel.shape[0] ** -0.5  # every fan-in here is 512
        assert np.abs(kernel).max() <= bound, name  # Flax's truncated LeCun normal reaches 2 * bound
        assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
        if "bias" in layer:
            bias = np.asarray(layer["bias"])
            assert np.abs(bias).max() <= bound and bias.std() > 0.4 * bound, name  # not zeros
    assert all("bias" not in params[p][fc] for p in train.PROJECTORS for fc in ("fc1", "fc2"))


def test_normalisation_constants_and_renormalize():
    pixels = np.array([[0, 0, 0], [255, 255, 255], list(COLOUR)], np.uint8)
    cifar = (pixels / 255 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(renormalize(normalize(pixels), "cifar10"), cifar, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(renormalize(normalize(pixels), "imagenet"), normalize(pixels))
    with pytest.raises(ValueError, match="normalization must be one of"):
        renormalize(normalize(pixels), "cifar100")


def test_mode_configs_use_cifar10_normalisation():
    for name in ("mode_cifar10", "mode_fashion_mnist"):
        for mode in train.MODES:
            config = get_config(name, mode)
            assert config.data.normalization == "cifar10", (name, mode)
            assert config.data.augmentation == ("ce" if mode == "ce" else "supcon"), (name, mode)
            config.init_from = "runs/ce"  # finetune's requirement; the other modes accept it
            train.check_config(config)
            if mode not in ("ce",):  # no trained classifier: its logits cannot be scored
                config.eval.methods = "csd,msp"
                with pytest.raises(
                    ValueError, match=r"\['msp'\] score the network's own classifier.*msp_probe"
                ):
                    train.check_config(config)
    # The leaderboard's cross-entropy baseline is MODE's ce mode, with that recipe's pipeline.
    ce_baseline = get_config("benchmark_fashion_mnist", "").training.ce
    assert (ce_baseline.mode, ce_baseline.data.normalization, ce_baseline.data.augmentation) == (
        "ce",
        "cifar10",
        "ce",
    )


def test_evaluation_embeds_with_the_configured_normalisation(modenet):
    model, variables = modenet
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    cifar = (pixels / 255 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    features, _, _ = embed_function(model, "cifar10")(variables, normalize(pixels))
    expected = jax.jit(model.apply)(variables, jnp.asarray(cifar, jnp.float32))["features"]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    imagenet_features, _, _ = embed_function(model, "imagenet")(variables, normalize(pixels))
    assert not np.allclose(imagenet_features, expected, rtol=1e-2, atol=1e-2)


def supcontrast_lr(epoch, batch_id, batches, lr, epochs, cosine, decay_epochs, warm):
    """SupContrast's ``adjust_learning_rate`` (per epoch, 1-based) then ``warmup_learning_rate``."""
    eta_min = lr * 0.1**3
    if cosine:
        value = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
    else:
        value = lr * 0.1 ** np.sum(epoch > np.asarray(decay_epochs))
    if warm and epoch <= 10:
        warmup_to = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * 10 / epochs)) / 2 if cosine else lr
        p = (batch_id + (epoch - 1) * batches) / (10 * batches)
        value = 0.01 + p * (warmup_to - 0.01)
    return value


def test_cifar10_recipes():
    recipes = {mode: get_config("mode_cifar10", mode) for mode in train.MODES}
    summary = {m: (c.batch_size, c.lr, c.lr_schedule, c.warmup_steps > 0) for m, c in recipes.items()}
    assert summary == {
        "ce": (256, 0.2, "step", False),
        "supcon": (512, 0.5, "cosine", True),
        "joint": (128, 0.5, "cosine", False),
        "finetune": (128, 0.1, "cosine", False),
    }
    # Step decay at epochs 350, 400, 450 (epoch e > 350 from the first step of epoch 351); an
    # epoch is len(train_loader) = ceil(50000 / batch) steps.
    ce = recipes["ce"]
    schedule = train.learning_rate_schedule(ce)
    assert ce.total_steps == 500 * 196
    for epoch in (1, 350, 351, 400, 401, 450, 451, 500):
        expected = supcontrast_lr(epoch, 0, 196, 0.2, 500, False, (350, 400, 450), False)
        assert float(schedule((epoch - 1) * 196)) == pytest.approx(expected, rel=1e-5), epoch
        assert float(schedule(epoch * 196 - 1)) == pytest.approx(expected, rel=1e-5), epoch
    # SupCon: 10 warm-up epochs from 0.01 to the cosine's value at epoch 10, then the cosine.
    supcon = recipes["supcon"]
    schedule = train.learning_rate_schedule(supcon)
    assert supcon.warmup_steps == 10 * 98 and supcon.total_steps == 500 * 98
    for step in (0, 1, 300, 979):
        expected = supcontrast_lr(step // 98 + 1, step % 98, 98, 0.5, 500, True, (), True)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(supcon.total_steps)) == pytest.approx(0.5e-3, rel=1e-4)


class ConstantColour:
    """An in-memory source of eight flat-colour 28 x 28 images."""

    class_names = ["a", "b"]
    labels = np.array([0, 1] * 4)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        image = np.broadcast_to(np.array(COLOUR, np.uint8), (28, 28, 3)).copy()
        return {"image": image, "label": int(self.labels[index]), "path": f"{index}.png"}


def test_augmentations():
    # main_ce.py's crop and flip keep a flat colour; SupContrast's jitter and grayscale do not.
    image = ConstantColour()[0]["image"]
    flat = normalize(np.array(COLOUR, np.uint8))
    for seed in range(8):
        out = crop_flip_transform(image, 32, np.random.default_rng(seed))
        assert out.shape == (32, 32, 3)
        np.testing.assert_allclose(out, np.broadcast_to(flat, out.shape), atol=1e-6)
    jittered = [mode_transform(image, 32, np.random.default_rng(seed)) for seed in range(8)]
    assert not all(np.allclose(j, flat, atol=1e-6) for j in jittered)
    # The trainer's batches use the config's augmentation.
    for mode, stays_flat in (("ce", True), ("supcon", False)):
        config = get_config("mode_fashion_mnist", f"{mode},smoke")
        images = next(train.train_data(config, ConstantColour()))["images"]
        size = config.data.image_size
        assert images.shape == (8, train.views_of(mode), size, size, 3)
        assert np.allclose(images, flat, atol=1e-6) == stays_flat, mode
