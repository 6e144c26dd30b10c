"""The leaderboard on Fashion-MNIST: known classes 0-5, unknown 6-9, every system on one budget.

    python -m resend_jax.benchmark --config configs/benchmark_fashion_mnist.py --workdir runs/benchmark
    python -m resend_jax.benchmark --config configs/benchmark_fashion_mnist.py:quickstart \
        --workdir runs/quickstart                      # make quickstart: one seed, ReSeND and CE
    python -m resend_jax.benchmark --config configs/benchmark_fashion_mnist.py:smoke --workdir /tmp/b

Systems are ``training+score``. Every training sees the same images: ``total_steps`` steps of
``batch_size`` training images of the known classes (SupCon and MODE see each in two views),
from scratch, with a ResNet-18 (ImageNet stem). Each training keeps its own recipe:

- ``resend``: ``resend_fashion_mnist.py`` (the relation on batch prototypes, rotations as
  classes), scored by ``resend`` with the quickstart's options (``evaluation.scores.resend``:
  similarity to the closest prototype, calibrated) and, as an ablation, post-hoc scores on
  its backbone;
- ``ce``: MODE's cross-entropy mode (``main_ce.py``'s augmentation, CIFAR-10 normalisation,
  SGD with momentum, cosine), scored on its own classifier (msp, maxlogit, energy) and its
  features (knn, mahalanobis);
- ``supcon``: SupContrast's loss and augmentation, scored by knn;
- ``mode``: SupCon + ALPA (``joint``), and ``mode_ft``: ALPA finetuning of the ``ce`` run of
  the same seed (fresh projectors), both scored by CSD. They train and evaluate at 36 px: at
  32 px the ImageNet stem leaves a 1x1 layer4 map, on which ALPA's cross-attention and CSD's
  local scales are the global feature; from 33 px it is 2x2 (MODE's own 4x4 map comes from the
  CIFAR stem at 32 px, 16x the compute).

Transfer (``config.transfer``): the ReSeND checkpoints, unchanged, on the classes they never
saw (6-9), every 3-vs-1 split, with 10, 100 or all support images per known class; the mean
over the four splits is one entry (``resend_jax/benchmark/transfer.py``).

Support = every training image of the known classes, test = the whole test split. The MODE
trainings' learning rates are the reference's at batch 128 (``main_ce.py``'s 0.2 at 256 and
SupCon's 0.5 at 512 scaled linearly; joint 0.5 and finetune 0.1 as MODE's), with cosine decay and
no warm-up (SupContrast warms up above batch 256 only).
"""

import importlib.util
from pathlib import Path

from ml_collections import ConfigDict

MAIN_SYSTEMS = (
    "resend+resend,ce+msp,ce+maxlogit,ce+energy,ce+knn,ce+mahalanobis,supcon+knn,mode+csd,mode_ft+csd"
)
ABLATION = "resend+knn,resend+mahalanobis,resend+csd,resend+proto_cosine"
TRANSFER_SYSTEMS = "resend+resend,resend+knn,resend+mahalanobis,resend+proto_cosine"
QUICKSTART_SYSTEMS = "resend+resend,ce+msp,ce+maxlogit,ce+energy,ce+knn,ce+mahalanobis"


def _config(name: str, arg: str | None = None) -> ConfigDict:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None) -> ConfigDict:
    if arg not in (None, "", "quickstart", "smoke"):
        raise ValueError(
            f"configs/benchmark_fashion_mnist.py takes 'quickstart', 'smoke' or nothing, got {arg!r}"
        )
    smoke = arg == "smoke"
    config = ConfigDict()
    config.seeds = "0,1,2,3,4"
    config.systems = MAIN_SYSTEMS
    config.ablation = ABLATION
    config.only_recorded = False  # True: tabulate the recorded runs, train nothing
    config.known_classes = "0,1,2,3,4,5"
    # 400 steps of 128 images: the quickstart fits 15 minutes on 2 cores; the balanced relation
    # loss learns from the first steps, where the pair-averaged one idled ~180 of 600.
    config.total_steps = 400
    config.batch_size = 128  # training images per step, every training
    config.data = ConfigDict()
    config.data.train = "idx:fashion_mnist:train"
    config.data.test = "idx:fashion_mnist:test"
    # Seeded samples for quick runs (0 = all; only 0 scores every system on the same images):
    # support images, and test images per side (known, unknown).
    config.data.support_size = 0
    config.data.test_size = 0

    # ReSeND's claim: the relation transfers. Its checkpoints on classes they never saw (6-9),
    # every 3-vs-1 split, with few support images per class; no finetuning (benchmark/transfer.py).
    config.transfer = ConfigDict()
    config.transfer.systems = TRANSFER_SYSTEMS
    config.transfer.classes = "6,7,8,9"
    config.transfer.unknown = 1  # unknown classes per split
    config.transfer.shots = "10,100,0"  # support images per known class; 0 = every training image

    config.training = ConfigDict()
    config.training.resend = _config("resend_fashion_mnist", "smoke" if smoke else None)
    trainings = [("ce", "ce"), ("supcon", "supcon"), ("mode", "joint"), ("mode_ft", "finetune")]
    for name, mode in trainings:
        training = _config("mode_fashion_mnist", f"{mode},smoke" if smoke else mode)
        training.data.train_size = 0
        if not smoke:
            training.checkpoint_every = 100
        config.training[name] = training
    config.training.mode_ft.init_from = "ce"  # a training of this benchmark: its run of the same seed
    for name in ("ce", "supcon"):  # the scores of these need no layer4 map: 32 px, as ReSeND
        config.training[name].data.image_size = 32

    config.evaluation = _config("eval", "smoke" if smoke else None)
    # The quickstart's ReSeND score: similarity to the closest prototype (not the reference's
    # softmax over prototypes), less each class's mean similarity on its own support images.
    config.evaluation.scores.resend.softmax = False
    config.evaluation.scores.resend.calibrate = True

    if arg == "quickstart":
        config.seeds = "0"
        config.systems = QUICKSTART_SYSTEMS
        config.ablation = ""
        config.transfer.systems = ""
    if smoke:
        config.seeds = "0"
        config.total_steps = 2
        config.batch_size = 8
        config.data.support_size = 60
        config.data.test_size = 20
        config.transfer.shots = "3"
        for name in ("mode", "mode_ft"):
            config.training[name].data.image_size = 32
    return config
