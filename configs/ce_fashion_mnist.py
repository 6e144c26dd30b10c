"""Cross-entropy baseline for the quickstart: the ReSeND quickstart's backbone, classes and budget.

    python -m resend_jax.quickstart --baseline
    python -m resend_jax.train --config configs/ce_fashion_mnist.py --workdir runs/quickstart/ce_train

The MODE trainer's ``ce`` mode with the ImageNet stem at 32 px on Fashion-MNIST known classes
0-5, for as many images as the ReSeND quickstart sees (600 steps of 64 pairs = 128 images), then
msp, energy, knn and mahalanobis on the whole test set (unknown = classes 6-9), support = all
known training images. Like ReSeND's quickstart, and unlike MODE's recipe, it normalises with
ImageNet's statistics and trains with the SupCon augmentation.
"""

import importlib.util
from pathlib import Path

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    spec = importlib.util.spec_from_file_location(
        "mode_fashion_mnist", Path(__file__).with_name("mode_fashion_mnist.py")
    )
    mode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mode)
    config = mode.get_config("ce,smoke" if arg == "smoke" else "ce")
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    config.model.stem = "imagenet"
    config.data.normalization = "imagenet"
    config.data.augmentation = "supcon"
    config.data.known_classes = "0,1,2,3,4,5"
    config.eval.methods = "msp,energy,knn,mahalanobis"
    if arg != "smoke":
        config.batch_size = 128
        config.total_steps = 600
        config.checkpoint_every = 100
        config.eval.support_size = 0
        config.eval.test_size = 0
    return config
