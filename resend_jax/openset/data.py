"""Open-set data: target vectors, the known / negative / unknown splitter and batch helpers.

A partition is a dict of host arrays ``{"image": uint8 (N, H, W, 1), "label": int32 (N,)}`` with
open-set labels: ``0..O-1`` for the known classes in the order given, ``NEGATIVE`` and
``UNKNOWN`` for the others. The exercise's three partitions are

- ``train``: the train split of knowns and negatives;
- ``validation``: the test split of knowns and negatives;
- ``test``: the test split of knowns and unknowns.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resend_jax.data.sources import open_source

NEGATIVE = -1
UNKNOWN = -2

PURPOSES = {
    "train": ("train", ("known", "negative")),
    "validation": ("test", ("known", "negative")),
    "test": ("test", ("known", "unknown")),
}


@dataclasses.dataclass(frozen=True)
class OpenSetSplit:
    """Original class ids of the known classes, the negatives and the unknowns."""

    known: tuple[int, ...]
    negative: tuple[int, ...] = ()
    unknown: tuple[int, ...] = ()

    def __post_init__(self):
        groups = (self.known, self.negative, self.unknown)
        classes = [c for group in groups for c in group]
        if len(set(classes)) != len(classes):
            raise ValueError(f"known, negative and unknown classes overlap: {groups}")


def targets(labels: jax.Array, num_classes: int) -> jax.Array:
    """(N,) open-set labels -> (N, O) targets: one-hot for knowns, uniform ``1/O`` otherwise."""
    labels = jnp.asarray(labels)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return jnp.where(labels[:, None] >= 0, one_hot, 1.0 / num_classes)


def openset_labels(
    labels: np.ndarray, split: OpenSetSplit, groups: Sequence[str] = ("known", "negative", "unknown")
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the samples whose class is in one of ``groups``, and their open-set labels."""
    mapping = {}
    if "known" in groups:
        mapping.update({c: i for i, c in enumerate(split.known)})
    if "negative" in groups:
        mapping.update(dict.fromkeys(split.negative, NEGATIVE))
    if "unknown" in groups:
        mapping.update(dict.fromkeys(split.unknown, UNKNOWN))
    labels = np.asarray(labels)
    indices = np.flatnonzero(np.isin(labels, list(mapping)))
    return indices, np.array([mapping[c] for c in labels[indices].tolist()], np.int32)


def load_partition(path: str, purpose: str, split: OpenSetSplit) -> dict[str, np.ndarray]:
    """Reads one of ``PURPOSES`` from a directory of MNIST-format IDX files (one gray channel)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(PURPOSES)}, got {purpose!r}")
    source_split, groups = PURPOSES[purpose]
    source = open_source(f"idx:{path}:{source_split}")
    indices, labels = openset_labels(source.labels, split, groups)
    return {"image": source.images[indices][..., None], "label": labels}


def split_batch(inputs, batch_targets):
    """``(inputs[known], targets[known], inputs[unknown])``; knowns have non-uniform targets."""
    known = batch_targets.max(axis=-1) > batch_targets.min(axis=-1)
    return inputs[known], batch_targets[known], inputs[~known]


def train_batches(
    data: dict[str, np.ndarray], batch_size: int, num_classes: int, seed: int, epoch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Epoch ``epoch`` of full shuffled batches ``{"image", "label", "target"}`` (remainder dropped)."""
    order = np.random.default_rng((seed, epoch)).permutation(len(data["label"]))
    all_targets = np.asarray(targets(data["label"], num_classes))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        yield {"image": data["image"][index], "label": data["label"][index], "target": all_targets[index]}
