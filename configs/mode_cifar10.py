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
Joint: SupCon + 1.0 * ALPA, batch 128, lr 0.5; finetune: ALPA only from a cross-entropy
checkpoint, lr 0.1; cross-entropy lr 0.1 (not given by the paper); SGD momentum 0.9, weight
decay 1e-4, cosine schedule, 500 epochs.
"""

from ml_collections import ConfigDict

TRAIN_IMAGES = 50_000
EPOCHS = 500
LEARNING_RATES = {"ce": 0.1, "supcon": 0.5, "joint": 0.5, "finetune": 0.1}


def get_config(arg: str | None = None) -> ConfigDict:
    args = [a for a in (arg or "").split(",") if a]
    modes = [a for a in args if a in LEARNING_RATES]
    unknown = [a for a in args if a not in LEARNING_RATES and a != "smoke"]
    if unknown or len(modes) > 1:
        raise ValueError(f"config argument {arg!r}: expected one of {sorted(LEARNING_RATES)} and/or 'smoke'")
    mode = modes[0] if modes else "joint"

    config = ConfigDict()
    config.trainer = "mode"
    config.mode = mode
    config.seed = 0
    config.batch_size = 128
    config.total_steps = EPOCHS * TRAIN_IMAGES // config.batch_size
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
    config.data.train_size = 0  # a seeded sample of the training images; 0 = all
    config.data.num_workers = 8
    config.ood = ConfigDict({"path": ""})

    config.loss = ConfigDict(
        {"temperature": 0.1, "base_temperature": 0.07, "alpa_weight": 1.0, "alpa_scale": 10.0}
    )
    config.lr = LEARNING_RATES[mode]
    config.momentum = 0.9
    config.weight_decay = 1e-4

    config.eval = ConfigDict()
    config.eval.methods = "csd,knn,msp,energy"
    config.eval.support_size = 0
    config.eval.test_size = 0
    config.eval.batch_size = 500
    config.eval.scores = ConfigDict({"csd": {"k": 10}, "knn": {"k": 50}})

    if "smoke" in args:
        config.total_steps = 4
        config.batch_size = 8
        config.log_every = 1
        config.checkpoint_every = 2
        config.data.num_workers = 0
        config.eval.support_size = 60
        config.eval.test_size = 20
        config.eval.batch_size = 40
    return config
