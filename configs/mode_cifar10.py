"""MODE on CIFAR-10, the paper's recipe (REFERENCE.md section 4), for accelerators.

    python -m resend_jax.train --config configs/mode_cifar10.py:ce --workdir runs/c10_ce
    python -m resend_jax.train --config configs/mode_cifar10.py:finetune --workdir runs/c10_ft \
        --config.init_from=runs/c10_ce --config.ood.path=tfds:svhn_cropped:test
    python -m resend_jax.train --config configs/mode_cifar10.py:joint --workdir runs/c10_joint \
        --config.data.data_dir=~/tensorflow_datasets --config.ood.path=tfds:svhn_cropped:test

The argument is a comma list of a mode (``ce``, ``supcon``, ``joint`` (default), ``finetune``)
and ``smoke``. ``tfds:cifar10`` must be prepared as ArrayRecord in ``config.data.data_dir``.
Out-of-distribution: ``--config.ood.path`` (a source spec, or an MNIST-format IDX directory),
else the held-out classes 5-9 (then classes 0-4 are in-distribution).
Recipes (REFERENCE.md section 4), SGD momentum 0.9, weight decay 1e-4, 500 epochs, CIFAR-10
normalisation in training and evaluation:

- ``ce`` (``main_ce.py``): batch 256, lr 0.2, step decay x0.1 at epochs 350, 400 and 450
  (``--config.lr_schedule=cosine`` for its ``--cosine``), crop and flip only;
- ``supcon`` (MODE's SupCon baseline): batch 512, lr 0.5, cosine, and SupContrast's 10-epoch
  warm-up from 0.01, which it switches on above batch 256;
- ``joint``: SupCon + 1.0 * ALPA, batch 128, lr 0.5, cosine;
- ``finetune``: ALPA only from a cross-entropy checkpoint, batch 128, lr 0.1, cosine.

An epoch is ``ceil(TRAIN_IMAGES / batch_size)`` steps, the reference's ``len(train_loader)``.
"""

import math

from ml_collections import ConfigDict

TRAIN_IMAGES = 50_000
EPOCHS = 500
RECIPES = {  # batch size, learning rate, schedule
    "ce": (256, 0.2, "step"),
    "supcon": (512, 0.5, "cosine"),
    "joint": (128, 0.5, "cosine"),
    "finetune": (128, 0.1, "cosine"),
}
LR_DECAY_EPOCHS = (350, 400, 450)
WARMUP_EPOCHS = 10
WARMUP_FROM = 0.01
WARMUP_ABOVE_BATCH = 256  # SupContrast: opt.warm = batch_size > 256


def epochs_to_steps(epochs: int, batch_size: int) -> int:
    return epochs * math.ceil(TRAIN_IMAGES / batch_size)


def get_config(arg: str | None = None) -> ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    modes = [a for a in args if a in RECIPES]
    unknown = [a for a in args if a not in RECIPES and a != "smoke"]
    if unknown or len(modes) > 1:
        raise ValueError(f"config argument {arg!r}: expected one of {sorted(RECIPES)} and/or 'smoke'")
    mode = modes[0] if modes else "joint"

    config = ConfigDict()
    config.trainer = "mode"
    config.mode = mode
    config.seed = 0
    config.batch_size, config.lr, config.lr_schedule = RECIPES[mode]
    config.total_steps = epochs_to_steps(EPOCHS, config.batch_size)
    config.log_every = 100
    config.checkpoint_every = 5000
    config.keep_checkpoints = 2
    config.distributed = False
    config.init_from = ""

    config.model = ConfigDict({"stem": "cifar", "head_dim": 128, "proj_dim": 80, "dtype": "float32"})
    config.data = ConfigDict()
    config.data.train = "tfds:cifar10:train"
    config.data.test = "tfds:cifar10:test"
    config.data.data_dir = ""
    config.data.known_classes = ""  # empty: all classes with ood.path, else the first half
    config.data.image_size = 32
    config.data.normalization = "cifar10"
    config.data.augmentation = "ce" if mode == "ce" else "supcon"
    config.data.train_size = 0  # a seeded sample of the training images; 0 = all
    config.data.num_workers = 8
    config.ood = ConfigDict({"path": ""})

    config.loss = ConfigDict(
        {"temperature": 0.1, "base_temperature": 0.07, "alpa_weight": 1.0, "alpa_scale": 10.0}
    )
    config.lr_decay_steps = tuple(epochs_to_steps(e, config.batch_size) for e in LR_DECAY_EPOCHS)
    config.lr_decay_rate = 0.1
    warm = config.batch_size > WARMUP_ABOVE_BATCH
    config.warmup_steps = epochs_to_steps(WARMUP_EPOCHS, config.batch_size) if warm else 0
    config.warmup_from = WARMUP_FROM
    config.momentum = 0.9
    config.weight_decay = 1e-4

    config.eval = ConfigDict()
    # msp and energy on the classifier where the mode trains one (ce), else on a linear probe.
    config.eval.methods = "csd,knn,msp,energy" if mode == "ce" else "csd,knn,msp_probe,energy_probe"
    config.eval.support_size = 0
    config.eval.test_size = 0
    config.eval.batch_size = 500
    config.eval.scores = ConfigDict({"csd": {"k": 10}, "knn": {"k": 50}})

    if "smoke" in args:
        config.total_steps = 4
        config.batch_size = 8
        config.warmup_steps = 0
        config.log_every = 1
        config.checkpoint_every = 2
        config.data.num_workers = 0
        config.eval.support_size = 60
        config.eval.test_size = 20
        config.eval.batch_size = 40
    return config
