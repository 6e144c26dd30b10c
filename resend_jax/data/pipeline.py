"""grain input pipelines: evaluation batches and ReSeND's training pairs.

- ``eval_batches(source, image_size, batch_size, num_workers=0)``: every item once, in source
  order, as ``{"image": float32 (B, S, S, 3), "label": int64 (B,), "path": str array (B,)}``;
  the last batch is smaller.
- ``pair_dataset(source, *, image_size, batch_size, neg_per_pos, class_balance, seed, ...)``:
  an endless (or ``num_epochs``) ``grain.DatasetIterator`` of per-host batches
  ``{"image_a", "image_b": float32 (B, S, S, 3), "target": float32 (B,)}``, target 0 = same
  class, 1 = different (``augment_on="device"``: uint8 crops, ``transforms.crop_transform``, that
  the train step augments further). Its ``get_state()`` / ``set_state()`` and grain's orbax handler
  (``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``) resume it exactly.
  ``pair_pipeline`` is the same as a ``grain.IterDataset``.
- ``epoch_pairs(labels, epoch, ...)``: the pair table of one epoch on one shard (numpy).
- ``pairs_per_epoch(labels, ...)``: its length, to turn epochs into steps.

Pairs follow the reference (REFERENCE.md section 2): every image is an anchor with 1 positive
(a random image of its class, possibly itself) and ``neg_per_pos`` negatives (a uniformly
chosen other class, then a random image of it); with ``class_balance`` each class is topped up
with random extra anchors to the size of the largest. The table is rebuilt each epoch from
``(seed, epoch)``, so partners change every epoch and are fully determined by the seed. The
epoch's anchors are shuffled once, identically on every process, and process ``i`` of ``n``
takes the ``i``-th of ``n`` equal blocks (the last ``len % n`` anchors of the epoch are dropped),
then draws its partners and shuffles its pairs from ``(seed, epoch, i, n)``. Each image of a
pair is augmented independently, with grain's per-element generator, in grain's worker
processes (``num_workers``; 0 = in the calling process).
"""

import collections
import sys
from typing import Any

import grain
import numpy as np
from absl import flags

from resend_jax.data.sources import DataError, Source
from resend_jax.data.transforms import crop_transform, eval_transform, train_transform

_TABLE_CACHE = 2  # epochs kept per process: the current one and the next at a boundary
AUGMENT_ON = ("host", "device")  # where the training augmentation runs (pair_pipeline's augment_on)


def _read_options() -> grain.ReadOptions:
    # Batches are large (up to hundreds of MB at 224 px): prefetch a few, not grain's 500.
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def _prefetch(dataset: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    if num_workers <= 0:
        return dataset
    if not flags.FLAGS.is_parsed():
        # grain 0.2.18 reads an absl flag when it starts workers; outside absl.app (tests,
        # notebooks, scripts) nothing has parsed flags, so mark them parsed at their defaults.
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)
    )


class _EvalItem:
    """source index -> eval-transformed item (a class, so it pickles into worker processes)."""

    def __init__(self, source: Source, image_size: int):
        self.source = source
        self.image_size = image_size

    def __call__(self, index: int) -> dict[str, Any]:
        item = self.source[index]
        return {
            "image": eval_transform(item["image"], self.image_size),
            "label": np.int64(item["label"]),
            "path": np.str_(item["path"]),
        }


def eval_batches(source: Source, image_size: int, batch_size: int, num_workers: int = 0):
    """Yields every item of ``source`` once, in order, eval-transformed, in batches."""
    dataset = grain.MapDataset.range(len(source)).map(_EvalItem(source, image_size))
    dataset = dataset.batch(batch_size, drop_remainder=False)
    iterator = iter(_prefetch(dataset.to_iter_dataset(_read_options()), num_workers))
    try:
        yield from iterator
    finally:
        iterator.close()


# ---------------------------------------------------------------------------------------------
# Pair sampling


def _class_tables(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (present class of each item, items sorted by class, class starts, class counts)."""
    present, cls = np.unique(labels, return_inverse=True)
    order = np.argsort(cls, kind="stable")
    counts = np.bincount(cls, minlength=len(present))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return cls, order, starts, counts


def _epoch_anchors(labels: np.ndarray, epoch: int, seed: int, class_balance: bool) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    anchors = np.arange(len(labels))
    if class_balance:
        cls, order, starts, counts = _class_tables(labels)
        extra = [
            order[starts[c] + rng.integers(0, counts[c], size=counts.max() - counts[c])]
            for c in range(len(counts))
        ]
        anchors = np.concatenate([anchors, *extra])
    return rng.permutation(anchors)


def _check_pairing(labels: np.ndarray, neg_per_pos: int, shard_count: int) -> None:
    if neg_per_pos < 0:
        raise ValueError(f"neg_per_pos must be >= 0, got {neg_per_pos}")
    if len(labels) < shard_count:
        raise DataError(f"{len(labels)} images cannot feed {shard_count} processes")
    if neg_per_pos and len(np.unique(labels)) < 2:
        raise DataError(f"negative pairs need at least 2 classes; the source has {np.unique(labels)}")


def pairs_per_epoch(labels: np.ndarray, neg_per_pos: int, class_balance: bool, shard_count: int = 1) -> int:
    """Pairs one process sees per epoch."""
    counts = np.unique(labels, return_counts=True)[1]
    anchors = len(counts) * counts.max() if class_balance else len(labels)
    return anchors // shard_count * (1 + neg_per_pos)


def epoch_pairs(
    labels: np.ndarray,
    epoch: int,
    *,
    seed: int,
    neg_per_pos: int,
    class_balance: bool,
    shard_index: int = 0,
    shard_count: int = 1,
) -> dict[str, np.ndarray]:
    """One epoch's shuffled pairs on one shard: ``{"a", "b": int32 indices, "target": uint8}``."""
    labels = np.asarray(labels)
    _check_pairing(labels, neg_per_pos, shard_count)
    anchors = _epoch_anchors(labels, epoch, seed, class_balance)
    per_shard = len(anchors) // shard_count
    local = anchors[shard_index * per_shard : (shard_index + 1) * per_shard]

    rng = np.random.default_rng([seed, epoch, shard_index, shard_count])
    cls, order, starts, counts = _class_tables(labels)
    c = cls[local]
    positive = order[starts[c] + rng.integers(0, counts[c])]
    other = rng.integers(0, max(len(counts) - 1, 1), size=(len(local), neg_per_pos))
    other += other >= c[:, None]
    negatives = order[starts[other] + rng.integers(0, counts[other])]

    partners = np.concatenate([positive[:, None], negatives], axis=1)
    targets = np.zeros(partners.shape, np.uint8)
    targets[:, 1:] = 1
    perm = rng.permutation(partners.size)
    return {
        "a": np.repeat(local, 1 + neg_per_pos)[perm].astype(np.int32),
        "b": partners.reshape(-1)[perm].astype(np.int32),
        "target": targets.reshape(-1)[perm],
    }


class PairIndexDataset(grain.MapDataset):
    """Pair index ``epoch * pairs_per_epoch + j`` -> the ``j``-th pair of that epoch's table."""

    def __init__(
        self,
        labels: np.ndarray,
        *,
        seed: int,
        neg_per_pos: int,
        class_balance: bool,
        shard_index: int,
        shard_count: int,
        num_epochs: int | None = None,
    ):
        super().__init__()
        labels = np.asarray(labels, np.int64)
        _check_pairing(labels, neg_per_pos, shard_count)
        self.labels = labels
        self.options = dict(
            seed=seed,
            neg_per_pos=neg_per_pos,
            class_balance=class_balance,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        self.per_epoch = pairs_per_epoch(labels, neg_per_pos, class_balance, shard_count)
        self.num_epochs = num_epochs
        self._tables: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()

    def __len__(self) -> int:
        return sys.maxsize if self.num_epochs is None else self.per_epoch * self.num_epochs

    def _table(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch not in self._tables:
            self._tables[epoch] = epoch_pairs(self.labels, epoch, **self.options)
            while len(self._tables) > _TABLE_CACHE:
                self._tables.popitem(last=False)
        return self._tables[epoch]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(int(index), self.per_epoch)
        table = self._table(epoch)
        return {"a": int(table["a"][j]), "b": int(table["b"][j]), "target": int(table["target"][j])}

    def __getstate__(self):
        return {**self.__dict__, "_tables": collections.OrderedDict()}

    def __str__(self) -> str:
        return f"PairIndexDataset(per_epoch={self.per_epoch}, {self.options})"


class _LoadPair:
    """Pair of indices + generator -> the two images, each augmented independently (or only
    cropped, to uint8, when the device augments them)."""

    def __init__(self, source: Source, image_size: int, augment: bool, augment_on: str = "host"):
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        self.source = source
        self.image_size = image_size
        self.augment = augment
        self.augment_on = augment_on

    def __call__(self, pair: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        images = []
        for key in ("a", "b"):
            item = self.source[pair[key]]
            if not self.augment:
                images.append(eval_transform(item["image"], self.image_size))
            elif self.augment_on == "device":
                images.append(crop_transform(item, self.image_size, rng))
            else:
                images.append(train_transform(item, self.image_size, rng))
        return {"image_a": images[0], "image_b": images[1], "target": np.float32(pair["target"])}


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # Only when the caller leaves sharding to the JAX runtime.

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is out of range [0, {shard_count})")
    return shard_index, shard_count


def pair_pipeline(
    source: Source,
    *,
    image_size: int,
    batch_size: int,
    neg_per_pos: int,
    class_balance: bool,
    seed: int,
    augment: bool = True,
    augment_on: str = "host",
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The training pairs as a ``grain.IterDataset`` (see ``pair_dataset``)."""
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    pairs = PairIndexDataset(
        source.labels,
        seed=seed,
        neg_per_pos=neg_per_pos,
        class_balance=class_balance,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
    )
    dataset = pairs.random_map(_LoadPair(source, image_size, augment, augment_on), seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return _prefetch(dataset.to_iter_dataset(_read_options()), num_workers)


def pair_dataset(source: Source, **options: Any) -> grain.DatasetIterator:
    """An iterator over this process's batches of training pairs; ``options`` as ``pair_pipeline``.

    ``batch_size`` is per process. Sharding defaults to ``jax.process_index()`` of
    ``jax.process_count()``. Batches run on across epoch boundaries; ``num_epochs=None`` never
    ends. Resuming needs the same arguments (``num_workers`` included) and the saved state.
    """
    return iter(pair_pipeline(source, **options))
