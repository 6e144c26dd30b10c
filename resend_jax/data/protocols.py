"""Known / unknown protocols: which classes are known, the support set and the test set.

- ``class_indices(source, classes)``: class names or indices -> indices (errors name the absent).
- ``subset(source, indices, labels=None, class_names=None)`` -> ``Subset``, a source view.
- ``known_subset(source, known)``: the known classes only, relabelled 0..K-1 in ``known`` order.
- ``open_set_subset(source, known)``: every sample; known classes relabelled 0..K-1, the rest
  ``UNKNOWN`` (-1). ``is_known(labels)`` is the boolean the metrics use (known = positive).
- ``concat(sources)``: several sources with the same classes (source domains) as one.
- ``OpenSetProtocol`` + ``preset(name, root, target)`` + ``FASHION_MNIST``: the benchmark
  protocols, opened with ``protocol.open(data_dir)`` -> ``(support, test)``.

Presets, following REFERENCE.md section 3 (layout ``<root>/<domain>/<class>/<img>``):

- ``PACS_DG``: target one of ArtPainting, Cartoon, Photo, Sketch; support the other three;
  known dog, elephant, giraffe, guitar, horse, house; unknown person.
- ``OfficeHome_DG``: target one of Art, Clipart, Product, RealWorld; support the other three;
  known the first 54 of the 65 classes in sorted order, unknown the last 11.
- ``DomainNet_IN_OUT``: support Real, target Painting or Sketch; 50 class folders, known the
  first 25 in sorted order. (The in-domain Real -> Real case needs the reference's own
  train/test lists: use ``list:`` sources in an ``OpenSetProtocol`` for it.)
- ``DTD``: support ``<root>/train``, target ``<root>/test``; known the first 23 of 47 classes.

The reference ships its own class lists for the last three; where the order above differs,
pass ``known=`` explicitly (every preset accepts it).
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
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
    """Class names or indices -> indices into ``source.class_names``; absent ones raise."""
    result = []
    for c in classes:
        if isinstance(c, (int, np.integer)):
            if not 0 <= c < len(source.class_names):
                raise DataError(f"known class index {c} is out of range [0, {len(source.class_names)})")
            result.append(int(c))
        elif c in source.class_names:
            result.append(source.class_names.index(c))
        else:
            raise DataError(f"known class {c!r} is not in the source (classes: {source.class_names})")
    if len(set(result)) != len(result):
        raise DataError(f"known classes repeat: {list(classes)}")
    present = np.bincount(source.labels, minlength=len(source.class_names))
    empty = [source.class_names[c] for c in result if present[c] == 0]
    if empty:
        raise DataError(f"known classes {empty} have no samples in the source")
    return result


def subset(
    source: Source,
    indices: Sequence[int] | np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Subset:
    return Subset(source, np.asarray(indices), labels, class_names)


def _relabel(source: Source, known: Sequence[str | int]) -> tuple[np.ndarray, list[str]]:
    known = class_indices(source, known)
    mapping = np.full(len(source.class_names), UNKNOWN, np.int64)
    mapping[known] = np.arange(len(known))
    return mapping[source.labels], [source.class_names[c] for c in known]


def known_subset(source: Source, known: Sequence[str | int]) -> Subset:
    """The samples of the known classes, relabelled 0..K-1 in the order of ``known``."""
    labels, names = _relabel(source, known)
    keep = np.flatnonzero(labels != UNKNOWN)
    return Subset(source, keep, labels[keep], names)


def open_set_subset(source: Source, known: Sequence[str | int]) -> Subset:
    """Every sample: known classes relabelled 0..K-1, all other classes ``UNKNOWN``."""
    labels, names = _relabel(source, known)
    return Subset(source, np.arange(len(source)), labels, names)


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
            open_source(self.test, data_dir=data_dir, skip_corrupt=skip_corrupt), self.known
        )
        if support.class_names != test.class_names:
            raise DataError(f"{self.name}: support and test name the known classes differently")
        return support, test


FASHION_MNIST = OpenSetProtocol(
    name="fashion_mnist",
    support=("idx:fashion_mnist:train",),
    test="idx:fashion_mnist:test",
    known=tuple(FASHION_MNIST_CLASSES[:6]),
)

PACS_DOMAINS = {"ArtPainting": "art_painting", "Cartoon": "cartoon", "Photo": "photo", "Sketch": "sketch"}
PACS_KNOWN = ("dog", "elephant", "giraffe", "guitar", "horse", "house")
OFFICEHOME_DOMAINS = {"Art": "Art", "Clipart": "Clipart", "Product": "Product", "RealWorld": "Real_World"}
DOMAINNET_DOMAINS = {"Painting": "painting", "Sketch": "sketch"}
DTD_SPLITS = {"test": "test"}


def _folder_classes(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist")
    return sorted(d.name for d in directory.iterdir() if d.is_dir())


def _first(directory: Path, count: int, expected: int) -> tuple[str, ...]:
    classes = _folder_classes(directory)
    if len(classes) != expected:
        raise DataError(f"{directory}: expected {expected} class folders, found {len(classes)}")
    return tuple(classes[:count])


def preset(
    name: str, root: str | Path, target: str | None = None, known: Sequence[str | int] | None = None
) -> OpenSetProtocol:
    """One of the reference benchmarks (module docstring) under ``root``; ``fashion_mnist`` too."""
    root = Path(root)
    if name == "fashion_mnist":
        return FASHION_MNIST if known is None else dataclasses.replace(FASHION_MNIST, known=tuple(known))
    if name == "PACS_DG":
        domains, default_known = PACS_DOMAINS, lambda d: PACS_KNOWN
    elif name == "OfficeHome_DG":
        domains, default_known = OFFICEHOME_DOMAINS, lambda d: _first(d, 54, 65)
    elif name == "DomainNet_IN_OUT":
        domains, default_known = DOMAINNET_DOMAINS, lambda d: _first(d, 25, 50)
    elif name == "DTD":
        domains, default_known = DTD_SPLITS, lambda d: _first(d, 23, 47)
    else:
        raise ValueError(
            f"unknown protocol {name!r}: PACS_DG, OfficeHome_DG, DomainNet_IN_OUT, DTD, fashion_mnist"
        )
    if target not in domains:
        raise ValueError(f"{name}: target must be one of {sorted(domains)}, got {target!r}")
    test_dir = root / domains[target]
    if name == "DomainNet_IN_OUT":
        support_dirs = [root / "real"]
    elif name == "DTD":
        support_dirs = [root / "train"]
    else:
        support_dirs = [root / d for t, d in domains.items() if t != target]
    return OpenSetProtocol(
        name=f"{name}:{target}",
        support=tuple(f"folder:{d}" for d in support_dirs),
        test=f"folder:{test_dir}",
        known=tuple(known) if known is not None else default_known(test_dir),
    )


def parse_classes(spec: str | Sequence[str | int]) -> list[str | int]:
    """``"0,1,2"`` or ``"dog,horse"`` (as configs and the command line give them) -> a class list.

    Items that are all digits become indices, the others stay names; a list passes through.
    """
    if not isinstance(spec, str):
        return list(spec)
    items = [item.strip() for item in spec.split(",") if item.strip()]
    return [int(item) if item.isdigit() else item for item in items]
