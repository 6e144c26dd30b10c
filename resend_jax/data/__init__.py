"""Data: image sources, known/unknown protocols, transforms and the grain pipelines.

``open_source(spec)`` opens ``idx:``, ``folder:``, ``list:`` and ``tfds:`` sources;
``benchmarks.open_benchmark`` the reference's benchmarks from its own lists;
``eval_batches`` feeds evaluation and ``pair_dataset`` feeds ReSeND training (see each module).
"""

from resend_jax.data.pipeline import eval_batches, pair_dataset, pair_pipeline, pairs_per_epoch
from resend_jax.data.protocols import (
    FASHION_MNIST,
    UNKNOWN,
    OpenSetProtocol,
    class_indices,
    concat,
    is_known,
    known_subset,
    open_set_subset,
    sample,
    subset,
)
from resend_jax.data.sources import FASHION_MNIST_CLASSES, DataError, Source, open_source
from resend_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize, train_transform

__all__ = [
    "DataError",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OpenSetProtocol",
    "Source",
    "UNKNOWN",
    "class_indices",
    "concat",
    "eval_batches",
    "eval_transform",
    "is_known",
    "known_subset",
    "normalize",
    "open_set_subset",
    "open_source",
    "pair_dataset",
    "pair_pipeline",
    "pairs_per_epoch",
    "sample",
    "subset",
    "train_transform",
]
