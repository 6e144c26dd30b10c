"""Open-set training with the entropic open-set loss (REFERENCE.md section 5).

Labels follow the libraries' convention: known classes ``0..O-1``, negatives (known unknowns,
seen in training) ``-1``, unknown unknowns (test only) ``-2``.
"""

from resend_jax.openset.data import (
    NEGATIVE,
    UNKNOWN,
    OpenSetSplit,
    load_partition,
    openset_labels,
    split_batch,
    targets,
)
from resend_jax.openset.losses import (
    confidence,
    entropic_openset_loss,
    entropic_openset_loss_log_softmax,
    objectosphere_penalty,
)
from resend_jax.openset.network import LeNet

__all__ = [
    "NEGATIVE",
    "UNKNOWN",
    "LeNet",
    "OpenSetSplit",
    "confidence",
    "entropic_openset_loss",
    "entropic_openset_loss_log_softmax",
    "load_partition",
    "objectosphere_penalty",
    "openset_labels",
    "split_batch",
    "targets",
]
