"""Known / unknown protocols: which classes are known, the support set and the test set.

- ``class_indices(source, classes)``: class names or indices -> indices (errors name the absent).
- ``subset(source, indices, labels=None, class_names=None)`` -> ``Subset``, a source view.
- ``known_subset(source, known)``: the known classes only, relabelled 0..K-1 in ``known`` order.
- ``open_set_subset(source, known_names)``: every sample; known classes (by name) relabelled
  0..K-1, the rest ``UNKNOWN`` (-1). ``is_known(labels)`` is the boolean the metrics use.
- ``concat(sources)``: several sources with the same classes (source domains) as one.
- ``OpenSetProtocol`` + ``FASHION_MNIST``: a protocol over source specs, opened with
  ``protocol.open(data_dir)`` -> ``(support, test)``.

Known classes given by index are resolved once, in the support set's class list, and the test
set is labelled by name: two sources with other class lists cannot disagree on what is known.
The reference's benchmarks are defined by its own lists: ``resend_jax.data.benchmarks``.
"""

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from resend_jax.data.sources import FASHION_MNIST_CLASSES, DataError, Source, open_source

UNKNOWN = -1


class Subset:
    """A view of ``source`` at ``indices``, optionally with new labels and class names."""

    def __init__(
        self,
        source: Source,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
    ):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise DataError(f"subset index out of range [0, {len(source)})")
        self.labels = np.asarray(source.labels[self.indices] if labels is None else labels, np.int64)
        if self.labels.shape != self.indices.shape:
            raise DataError(f"subset: {len(self.labels)} labels for {len(self.indices)} indices")
        self.class_names = list(source.class_names if class_names is None else class_names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item = self.source[self.indices[index]]
        return {**item, "label": int(self.labels[index])}


def class_indices(source: Source, classes: Sequence[str | int]) -> list[int]:
    """Class names or indices -> indices into ``source.class_names``; absent ones raise.

    A string that is a class name is that class, even if it is all digits (folders ``1/ 2/ 10/``);
    other all-digit strings and ints are indices into the source's (sorted) class list.
    """
    result = []
    for c in classes:
        if isinstance(c, str) and c in source.class_names:
            result.append(source.class_names.index(c))
        elif isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit()):
            if not 0 <= int(c) < len(source.class_names):
                raise DataError(f"known class index {c} is out of range [0, {len(source.class_names)})")
            result.append(int(c))
        else:
            raise DataError(f"known class {c!r} is not in the source (classes: {source.class_names})")
    if len(set(result)) != len(result):
        raise DataError(f"known classes repeat: {list(classes)}")
    present = np.bincount(source.labels, minlength=len(source.class_names))
    empty = [source.class_names[c] for c in result if present[c] == 0]
    if empty:
        raise DataError(f"known classes {empty} have no samples in the source")
    return result


def class_names_of(source: Source, classes: Sequence[str | int]) -> list[str]:
    """``class_indices`` as names."""
    return [source.class_names[c] for c in class_indices(source, classes)]


def subset(
    source: Source,
    indices: Sequence[int] | np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Subset:
    return Subset(source, np.asarray(indices), labels, class_names)


def sample(source: Source, size: int, seed: int) -> Source:
    """A seeded random subset of ``size`` items (all when ``size`` is 0 or too large), in order."""
    if not size or size >= len(source):
        return source
    indices = np.sort(np.random.default_rng(seed).choice(len(source), size, replace=False))
    return Subset(source, indices, source.labels[indices])


def known_subset(source: Source, known: Sequence[str | int]) -> Subset:
    """The samples of the known classes, relabelled 0..K-1 in the order of ``known``."""
    known = class_indices(source, known)
    mapping = np.full(len(source.class_names), UNKNOWN, np.int64)
    mapping[known] = np.arange(len(known))
    labels = mapping[source.labels]
    keep = np.flatnonzero(labels != UNKNOWN)
    return Subset(source, keep, labels[keep], [source.class_names[c] for c in known])


def open_set_subset(source: Source, known_names: Sequence[str]) -> Subset:
    """Every sample: the classes named in ``known_names`` relabelled 0..K-1, all others ``UNKNOWN``.

    Known classes the source lacks are allowed (their prototypes still count, as in the
    reference's OfficeHome_DG) and logged.
    """
    known_names = [str(n) for n in known_names]
    absent = [n for n in known_names if n not in source.class_names]
    if absent:
        logging.warning("known classes %s have no images in the test set", absent)
    position = {n: i for i, n in enumerate(known_names)}
    mapping = np.array([position.get(n, UNKNOWN) for n in source.class_names], np.int64)
    return Subset(source, np.arange(len(source)), mapping[source.labels], known_names)


def is_known(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels) != UNKNOWN


class Concat:
    """Sources with identical class names, one after another (e.g. the source domains)."""

    def __init__(self, sources: Sequence[Source]):
        if not sources:
            raise DataError("concat: no sources")
        for s in sources[1:]:
            if list(s.class_names) != list(sources[0].class_names):
                raise DataError(f"concat: class names differ: {sources[0].class_names} vs {s.class_names}")
        self.sources = list(sources)
        self.class_names = list(sources[0].class_names)
        self.labels = np.concatenate([s.labels for s in sources])
        self._offsets = np.cumsum([0] + [len(s) for s in sources])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        which = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.sources[which][index - int(self._offsets[which])]


def concat(sources: Sequence[Source]) -> Source:
    return sources[0] if len(sources) == 1 else Concat(sources)


def fingerprint(source: Any) -> str:
    """A hash of what ``source`` holds: for image files their paths, sizes and modification
    times (files changed in place change it), for in-memory arrays their bytes, and the labels."""
    digest = hashlib.sha1()

    def visit(s: Any) -> None:
        if isinstance(s, Subset):
            digest.update(s.indices.tobytes() + s.labels.tobytes())
            visit(s.source)
        elif isinstance(s, Concat):
            for part in s.sources:
                visit(part)
        elif hasattr(s, "paths"):
            for path in s.paths:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        elif hasattr(s, "images"):
            digest.update(np.ascontiguousarray(s.images).tobytes())
        else:
            digest.update(repr((type(s).__name__, getattr(s, "_name", None), len(s))).encode())
        digest.update(np.asarray(s.labels, np.int64).tobytes())

    visit(source)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class OpenSetProtocol:
    """Support = known classes of ``support`` specs; test = all of ``test`` with unknowns -1."""

    name: str
    support: tuple[str, ...]
    test: str
    known: tuple[str | int, ...]

    def open(self, data_dir: str | None = None, skip_corrupt: bool = False) -> tuple[Subset, Subset]:
        opened = [open_source(s, data_dir=data_dir, skip_corrupt=skip_corrupt) for s in self.support]
        support = known_subset(concat(opened), self.known)
        test = open_set_subset(
            open_source(self.test, data_dir=data_dir, skip_corrupt=skip_corrupt), support.class_names
        )
        return support, test


FASHION_MNIST = OpenSetProtocol(
    name="fashion_mnist",
    support=("idx:fashion_mnist:train",),
    test="idx:fashion_mnist:test",
    known=tuple(FASHION_MNIST_CLASSES[:6]),
)


def parse_classes(spec: str | Sequence[str | int]) -> list[str | int]:
    """``"0,1,2"`` or ``"dog,horse"`` (as configs and the command line give them) -> a class list.

    Items stay strings: ``class_indices`` decides, on the source, whether ``"1"`` is a class name
    or an index. A list passes through.
    """
    if not isinstance(spec, str):
        return list(spec)
    return [item.strip() for item in spec.split(",") if item.strip()]
