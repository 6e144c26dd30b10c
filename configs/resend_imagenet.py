"""The paper's ReSeND recipe: ImageNet-1k pairs, 224 px, 4096 pairs/step, LARS, 13,000 steps.

    python -m resend_jax.convert_torch --torchvision_resnet18 resnet18-f37072fd.pth --out models/in1k
    python -m resend_jax.train --config configs/resend_imagenet.py --workdir runs/resend_in1k \\
        --config.init_from=models/in1k --config.data.data_dir=/path/to/tfds

``config.data.train`` may be ``tfds:imagenet2012`` (ArrayRecord-prepared) or
``folder:/path/ImageNet/train``. Weight decay is 5e-4 as in the released code (the
supplementary says 5e-5). The batch is global: 4096 pairs over all devices of all hosts.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    config = ConfigDict()
    config.trainer = "resend"
    config.seed = 0
    config.total_steps = 13_000
    config.batch_size = 4096
    config.log_every = 10
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.distributed = False  # True on TPU pods / SLURM: jax.distributed.initialize()
    # --dry_run: the step time to plan the input pipeline for (0 = measured on this machine with
    # a batch of dry_run_measure_batch images and scaled to the per-device batch).
    config.dry_run_step_s = 0.0
    config.dry_run_measure_batch = 8
    config.init_from = ""  # required: a converted torchvision ResNet-18 (above), or "none": from scratch

    config.model = ConfigDict(
        {
            "stem": "imagenet",
            "embed_dim": 768,
            "depth": 4,
            "num_heads": 12,
            "head_zero_init": False,
            # "features": tokens from a and b (reference); "symmetric": from a' * b' and
            # |a' - b'| of the normalised features (models/relational.py).
            "pair_tokens": "features",
            "cosine_residual": False,  # True: the logit is scale * (bias - cos(a, b)) + the relation's
            "distance_residual": False,  # True: + scale * (mean((a - b)^2) - bias) (models/relational.py)
            # "known_classes": the relation sees features whitened by the known classes' within-class
            # covariance (the batch's in training, the support's at test; models/whitening.py).
            "whitening": "none",
            "whitening_shrinkage": 0.5,
            "dtype": "float32",
        }
    )
    config.data = ConfigDict()
    config.data.train = "tfds:imagenet2012:train"
    config.data.data_dir = ""
    config.data.known_classes = ""  # all 1000 classes
    config.data.image_size = 224
    config.data.partners = "images"  # reference: pairs of images (train/resend.py: training_data)
    config.data.rotation_classes = False  # batch_prototypes only: rotated copies as extra classes
    config.data.neg_per_pos = 20
    config.data.class_balance = True
    config.data.augment = True
    # "host": the reference's augmentation in the grain workers; "device": the workers only decode
    # and crop (uint8), the train step does the rest, pixel for pixel as the host (data/device_augment.py).
    config.data.augment_on = "host"
    config.data.num_workers = 8
    # Truncated JPEGs (a few in ImageNet) decode partially, as the reference sets PIL's
    # LOAD_TRUNCATED_IMAGES; False makes each one an error naming the file.
    config.data.load_truncated_images = True

    config.loss_weighting = "pairs"  # the MSE averaged over pairs; "balanced": same / different halves
    config.optimizer = "lars"
    config.lr = 0.008
    config.warmup_steps = 500
    config.lr_schedule = "constant"  # the reference: constant after the warmup; "cosine": to 0 at total_steps
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.lars_trust = 0.001
    config.lars_eps = 1e-8
    config.lars_exclude_bias_and_norm = False  # True: no decay/adaptation for biases and norms

    if arg == "smoke":
        config.init_from = "none"
        config.total_steps = 3
        config.batch_size = 8
        config.log_every = 1
        config.checkpoint_every = 2
        config.warmup_steps = 2
        config.data.train = "idx:/usr/share/datasets/fashion-mnist:train"
        config.data.image_size = 32
        config.data.neg_per_pos = 3
        config.data.num_workers = 0
        config.model.embed_dim = 64
        config.model.depth = 1
        config.model.num_heads = 2
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return config
