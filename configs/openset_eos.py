"""Open-set training with the entropic open-set loss (REFERENCE.md section 5), Fashion-MNIST.

``--config configs/openset_eos.py`` trains EOS on the exercise's split; ``:smoke`` is a tiny run
for tests. ``--config.loss=softmax`` trains the plain softmax baseline (negatives dropped);
``--config.objectosphere.weight=1e-4`` adds the Objectosphere term; ``--config.data.path=DIR``
reads another directory of MNIST-format IDX files (MNIST itself, for one).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.trainer = "openset"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.path = "/usr/share/datasets/fashion-mnist"
    config.data.known = (4, 5, 8, 9)
    config.data.negative = (0, 2, 3, 7)
    config.data.unknown = (1, 6)
    config.data.limit = 0  # Keep the first N samples of each partition; 0 keeps all.

    config.loss = "eos"  # "eos" or "softmax" (trains on the knowns only).
    config.objectosphere = ml_collections.ConfigDict()
    config.objectosphere.weight = 0.0  # lambda; 0 disables the term.
    config.objectosphere.xi = 10.0  # Minimum deep-feature magnitude for knowns.

    config.model = ml_collections.ConfigDict()
    config.model.conv_features = (16, 32)
    config.model.kernel_size = 5
    config.model.feature_dim = 64

    config.num_epochs = 10
    # More epochs when these run fewer steps: 10 epochs are 180 steps on a 1,200-image train
    # partition (7,500 on Fashion-MNIST's 48,000). The epoch with the best validation confidence
    # is evaluated, so a long run does not overfit the reported model.
    config.min_steps = 2000
    config.batch_size = 64
    config.learning_rate = 0.01
    config.momentum = 0.9

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    config.eval.tau = 0.5
    config.eval.fpr_levels = (1e-3, 1e-2, 1e-1)

    if arg == "smoke":
        config.data.limit = 2000
        config.num_epochs = 2
        config.min_steps = 0
        config.batch_size = 32
        config.eval.batch_size = 500
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
