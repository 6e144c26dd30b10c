"""MODE on Fashion-MNIST, sized for 2 CPU cores (minutes per run).

    python -m resend_jax.train --config configs/mode_fashion_mnist.py:supcon --workdir runs/mode_supcon
    python -m resend_jax.train --config configs/mode_fashion_mnist.py:ce --workdir runs/mode_ce
    python -m resend_jax.train --config configs/mode_fashion_mnist.py:finetune --workdir runs/mode_ft \
        --config.init_from=runs/mode_ce
    python -m resend_jax.train --config configs/mode_fashion_mnist.py:joint,smoke --workdir /tmp/s

The argument is a comma list of a mode (``ce``, ``supcon``, ``joint`` (default), ``finetune``)
and ``smoke``. In-distribution: Fashion-MNIST classes 0-4 (T-shirt/top, Trouser, Pullover,
Dress, Coat); out-of-distribution: the held-out classes 5-9, or the test split of an
MNIST-format IDX directory given with ``--config.ood.path=DIR`` (then all ten classes are
in-distribution unless ``--config.data.known_classes`` says otherwise).

Deviations from the CIFAR recipe (``mode_cifar10.py``), for a CPU budget, each a config key:
an ImageNet-stem ResNet-18 at 36 px instead of the CIFAR stem at 32 (16x less compute; 36 px
is the smallest size at which its layer4 map is 2x2, so ALPA's cross-attention and CSD's local
scales see four regions rather than only the global feature), 100 steps of 128 images instead
of 500 epochs, the reference's learning rates at batch 128 (``main_ce.py``'s 0.2 at 256 and
SupCon's 0.5 at 512 scaled linearly: 0.1 and 0.125; joint 0.5 and finetune 0.1 as MODE's),
cosine for ce too (``--config.lr_schedule=step`` with ``lr_decay_steps`` for ``main_ce.py``'s),
no warm-up (SupContrast warms up above batch 256 only), and the evaluation on a seeded sample
(6000 support, 1000 known and 1000 unknown test images). As the reference: CIFAR-10
normalisation, ``main_ce.py``'s crop-and-flip augmentation for ce and SupContrast's for the
other modes. ``configs/benchmark_fashion_mnist.py`` trains these recipes on the leaderboard's
split and budget; docs/mode_openset_fashion_mnist.md has their results.
"""

from ml_collections import ConfigDict

# The reference's at batch 128 (see above).
LEARNING_RATES = {"ce": 0.1, "supcon": 0.125, "joint": 0.5, "finetune": 0.1}


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
    config.total_steps = 100
    config.batch_size = 128  # images per step, global (each seen in 2 views except for ce)
    config.log_every = 10
    config.checkpoint_every = 50
    config.keep_checkpoints = 2
    config.distributed = False
    config.init_from = ""  # finetune: the workdir of a mode=ce run

    config.model = ConfigDict({"stem": "imagenet", "head_dim": 128, "proj_dim": 80, "dtype": "float32"})
    config.data = ConfigDict()
    config.data.train = "idx:fashion_mnist:train"  # /usr/share/datasets/fashion-mnist
    config.data.test = "idx:fashion_mnist:test"
    config.data.data_dir = ""
    config.data.known_classes = ""  # empty: the first half, or all classes with ood.path
    config.data.image_size = 36  # the ImageNet stem's layer4 map is 2x2 from 33 px
    config.data.normalization = "cifar10"
    config.data.augmentation = "ce" if mode == "ce" else "supcon"
    config.data.train_size = 0  # a seeded sample of the training images; 0 = all
    config.data.num_workers = 0
    config.ood = ConfigDict({"path": ""})  # an MNIST-format IDX dir (its test split) or a source spec

    config.loss = ConfigDict(
        {"temperature": 0.1, "base_temperature": 0.07, "alpa_weight": 1.0, "alpa_scale": 10.0}
    )
    config.lr = LEARNING_RATES[mode]
    config.lr_schedule = "cosine"
    config.lr_decay_steps = ()  # lr_schedule = "step": lr * lr_decay_rate at each of these steps
    config.lr_decay_rate = 0.1
    config.warmup_steps = 0
    config.warmup_from = 0.01
    config.momentum = 0.9
    config.weight_decay = 1e-4

    config.eval = ConfigDict()
    # msp and energy on the classifier where the mode trains one (ce), else on a linear probe.
    config.eval.methods = "csd,knn,msp,energy" if mode == "ce" else "csd,knn,msp_probe,energy_probe"
    config.eval.support_size = 6000  # 0 = every training image
    config.eval.test_size = 1000  # per side (known, ood); 0 = all
    config.eval.batch_size = 250
    config.eval.scores = ConfigDict({"csd": {"k": 10}, "knn": {"k": 50}})

    if "smoke" in args:
        config.total_steps = 5
        config.batch_size = 8
        config.lr = 0.02
        config.data.train_size = 8  # the same images every step, so that 5 steps lower the loss
        config.log_every = 1
        config.checkpoint_every = 2
        config.eval.support_size = 60
        config.eval.test_size = 20
        config.eval.batch_size = 40
    return config
