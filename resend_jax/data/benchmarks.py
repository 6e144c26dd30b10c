"""The reference's benchmarks, defined by its own text lists (REFERENCE.md section 3).

The official code ships every split as ``<lists>/<benchmark>/<name>.txt``, one
``relative/path label`` a line, paths relative to the data folder (``<root>/DomainNet`` for the
DomainNet benchmarks). Labels below K are known, the others unknown; the support list gives one
prototype per known label, and the softmax runs over all K even when the test list holds images
of only some known classes (OfficeHome_DG, MultiDatasets_DG).

The project does not ship the lists (users point ``lists`` at ``data/txt_lists`` of their clone of
the official repository); it ships the facts: K, the number of classes, the known class names in
label order and which list is the support and which the test of each target.
``open_benchmark(name, target, lists, root)`` reads both lists, checks every path exists, and
returns the support and test sets with a ``protocol`` dict that says what was used.
"""

import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resend_jax.data.protocols import UNKNOWN, Subset
from resend_jax.data.sources import DataError, FileSource

MAX_LISTED_MISSING = 20


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark: K known of ``num_classes``, and per target ``(support lists, test list)``.

    ``known_classes`` are the names of labels 0..K-1. ``name_check`` says how they are checked
    against the folder names in the support list: ``"ordered"`` (label by label), ``"set"`` (the
    label order differs between the published versions) or ``"none"`` (the support list is not
    published).
    """

    name: str
    known_classes: tuple[str, ...]
    num_classes: int
    splits: Mapping[str, tuple[tuple[str, ...], str]]
    under_domainnet: bool = False
    name_check: str = "ordered"

    @property
    def num_known(self) -> int:
        return len(self.known_classes)

    def data_root(self, root: str | Path) -> Path:
        return Path(root) / "DomainNet" if self.under_domainnet else Path(root)


PACS_KNOWN = ("dog", "elephant", "giraffe", "guitar", "horse", "house")
PACS_TARGETS = ("ArtPainting", "Cartoon", "Photo", "Sketch")
OFFICEHOME_DG_KNOWN = (
    "Drill Exit_Sign Bottle Glasses Computer File_Cabinet Shelf Toys Sink Laptop Kettle Folder Keyboard "
    "Flipflops Pencil Bed Hammer ToothBrush Couch Bike Postit_Notes Mug Webcam Desk_Lamp Telephone Helmet "
    "Mouse Pen Monitor Mop Sneakers Notebook Backpack Alarm_Clock Push_Pin Paper_Clip Batteries Radio Fan "
    "Ruler Pan Screwdriver Trash_Can Printer Speaker Eraser Bucket Chair Calendar Calculator Flowers "
    "Lamp_Shade Spoon Candles"
).split()
OFFICEHOME_SS_KNOWN = (
    "Alarm_Clock Backpack Batteries Bed Bike Bottle Bucket Calculator Calendar Candles Chair Clipboards "
    "Computer Couch Curtains Desk_Lamp Drill Eraser Exit_Sign Fan File_Cabinet Flipflops Flowers Folder Fork"
).split()
OFFICEHOME_TARGETS = ("Art", "Clipart", "Product", "RealWorld")
DOMAINNET_KNOWN = (
    "circle hexagon smiley_face squiggle calendar pond animal_migration golf_club hurricane tornado elbow "
    "knee ocean rake yoga zigzag cloud bracelet postcard stop_sign birthday_cake cookie arm chandelier "
    "camouflage"
).split()
DOMAINNET_DOMAINS = ("Painting", "Real", "Sketch")
DTD_KNOWN = (
    "crystalline fibrous spiralled stratified matted porous scaly stained pleated flecked pitted meshed "
    "freckled waffled cracked potholed cobwebbed swirly polka-dotted striped studded grooved woven"
).split()
# Office-31 (labels 0-30), then VisDA's and STL-10's other classes; spelled as in the published
# test lists where they appear there (DomainNet folder names), else as in their own datasets.
MULTIDATASETS_KNOWN = (
    "backpack bicycle bike_helmet bookcase bottle calculator chair desk_lamp desktop_computer file_cabinet "
    "headphones keyboard laptop_computer letter_tray cell_phone monitor mouse mug paper_notebook pen "
    "telephone printer projector punchers ring_binder ruler scissors speaker stapler tape_dispenser "
    "trash_can airplane bus car horse knife motorbike person plant skateboard train truck bird cat deer "
    "dog monkey ship"
).split()
IN_OUT = {"in_out": (("in_distribution.txt",), "out_distribution.txt")}

BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark("PACS_DG", PACS_KNOWN, 7, {t: ((f"no_{t}.txt",), f"{t}.txt") for t in PACS_TARGETS}),
        Benchmark(
            "PACS_SS_DG",
            PACS_KNOWN,
            7,
            {t: (("Source.txt",), f"{t}.txt") for t in ("ArtPainting", "Cartoon", "Sketch")},
        ),
        Benchmark(
            "OfficeHome_DG",
            tuple(OFFICEHOME_DG_KNOWN),
            65,
            {t: ((f"no_{t}.txt",), f"{t}.txt") for t in OFFICEHOME_TARGETS},
        ),
        Benchmark(
            "OfficeHome_SS_DG",
            tuple(OFFICEHOME_SS_KNOWN),
            65,
            {t: (("Source.txt",), f"{t}.txt") for t in ("Art", "Clipart", "Product")},
        ),
        Benchmark("DomainNet_IN_OUT", tuple(DOMAINNET_KNOWN), 50, IN_OUT, under_domainnet=True),
        Benchmark("DomainNet_Painting", tuple(DOMAINNET_KNOWN), 50, IN_OUT, under_domainnet=True),
        Benchmark("DomainNet_Sketch", tuple(DOMAINNET_KNOWN), 50, IN_OUT, under_domainnet=True),
        Benchmark(
            "DomainNet_DG",
            tuple(DOMAINNET_KNOWN),
            50,
            {
                f"{x}-{y}": ((f"Source_{x}.txt",), f"Target_{y}.txt")
                for x, y in itertools.product(DOMAINNET_DOMAINS, DOMAINNET_DOMAINS)
            },
            under_domainnet=True,
        ),
        Benchmark("DTD", tuple(DTD_KNOWN), 47, IN_OUT, name_check="set"),
        Benchmark(
            "MultiDatasets_DG",
            tuple(MULTIDATASETS_KNOWN),
            68,
            {t: (("Sources.txt",), f"{t}.txt") for t in ("Clipart", "Painting", "Real", "Sketch")},
            name_check="none",
        ),
    ]
}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: choose from {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def targets(name: str, requested: Sequence[str] = ()) -> list[str]:
    """The requested targets of benchmark ``name`` (each checked), or all of them."""
    benchmark = get(name)
    unknown = [t for t in requested if t not in benchmark.splits]
    if unknown:
        raise ValueError(f"{name}: unknown target(s) {unknown}; choose from {list(benchmark.splits)}")
    return list(requested) or list(benchmark.splits)


def read_list(path: str | Path) -> tuple[list[str], np.ndarray]:
    """A reference list -> (relative paths, int64 labels); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark list {path} does not exist")
    relative, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.isdigit():
            raise DataError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        relative.append(name.strip())
        labels.append(int(label))
    if not relative:
        raise DataError(f"benchmark list {path} is empty")
    return relative, np.asarray(labels, np.int64)


def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 42) -> np.ndarray:
    """The reference's ``few_shot_subsample``: per class (in ``set(labels)`` order), ``shots``
    indices drawn with replacement by one ``default_rng(seed)``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed=seed)
    indices = np.arange(len(labels))
    return np.concatenate([rng.choice(indices[labels == c], shots) for c in set(labels.tolist())])


def folder_names(relative: Sequence[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Class names of labels 0..num_classes-1 from the paths' parent folders ('' where absent)."""
    names = [""] * num_classes
    for path, label in zip(relative, labels.tolist()):
        if not names[label]:
            names[label] = Path(path).parent.name
    return names


def _check_names(benchmark: Benchmark, list_path: Path, listed: list[str]) -> list[str]:
    """The known names in this list's label order, checked against the benchmark's facts."""
    known = list(benchmark.known_classes)
    if benchmark.name_check == "none":
        return known
    listed = listed[: benchmark.num_known]
    wrong = (
        sorted(listed) != sorted(known)
        if benchmark.name_check == "set"
        else [n for n, k in zip(listed, known) if n != k]
    )
    if wrong:
        raise DataError(
            f"{list_path}: the known labels 0..{benchmark.num_known - 1} name the classes {listed}, but "
            f"{benchmark.name} knows {known}: is --config.data.lists the reference's data/txt_lists?"
        )
    return listed if benchmark.name_check == "set" else known


def _check_paths(root: Path, entries: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """``{list: missing relative paths}`` for every list with missing files."""
    return {name: {p for p in relative if not (root / p).is_file()} for name, relative in entries.items()}


def open_benchmark(
    name: str,
    target: str,
    lists: str | Path,
    root: str | Path,
    *,
    skip_missing: bool = False,
    few_shot: int = 0,
    few_shot_seed: int = 42,
    skip_corrupt: bool = False,
    load_truncated: bool = True,
) -> tuple[Subset, Subset, dict[str, Any]]:
    """Support (known classes 0..K-1), test (known 0..K-1, unknown ``UNKNOWN``) and the protocol.

    Every path of both lists is checked before anything is decoded: missing files raise one
    ``DataError`` naming the root, the lists, the counts and the first 20, unless
    ``skip_missing``, which drops them and counts them in ``protocol["missing"]``.
    ``few_shot`` > 0 keeps that many support images per class as the reference's ``--few_shot``.
    ``load_truncated`` reads truncated JPEGs partially, as the reference (``LOAD_TRUNCATED_IMAGES``).
    """
    benchmark = get(name)
    targets(name, [target])
    support_lists, test_list = benchmark.splits[target]
    directory = Path(lists) / name
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist: --config.data.lists must be the reference's data/txt_lists folder"
        )
    if name == "MultiDatasets_DG" and not (directory / "Sources.txt").is_file():
        raise FileNotFoundError(
            f"{directory / 'Sources.txt'} does not exist: the published reference repository does not "
            "include MultiDatasets_DG's support list; put the authors' Sources.txt there"
        )
    K = benchmark.num_known
    support_paths, support_labels = [], []
    for list_name in support_lists:
        relative, labels = read_list(directory / list_name)
        support_paths += relative
        support_labels.append(labels)
    support_labels = np.concatenate(support_labels)
    test_paths, test_labels = read_list(directory / test_list)
    for list_name, labels in [(", ".join(support_lists), support_labels), (test_list, test_labels)]:
        if labels.max() >= benchmark.num_classes:
            raise DataError(
                f"{directory / list_name}: label {labels.max()} is out of range: {name} has "
                f"{benchmark.num_classes} classes"
            )
    unknown_support = int((support_labels >= K).sum())
    if unknown_support:
        logging.warning("%s: %d support images of unknown classes ignored", name, unknown_support)
        keep = np.flatnonzero(support_labels < K)
        support_paths, support_labels = [support_paths[i] for i in keep], support_labels[keep]
    listed = folder_names(support_paths, support_labels, K)
    known = _check_names(benchmark, directory / support_lists[0], listed)
    if few_shot > 0:
        chosen = few_shot_indices(support_labels, few_shot, few_shot_seed)
        support_paths, support_labels = [support_paths[i] for i in chosen], support_labels[chosen]

    data_root = benchmark.data_root(root)
    missing = _check_paths(data_root, {", ".join(support_lists): support_paths, test_list: test_paths})
    num_missing = sum(len(m) for m in missing.values())
    if num_missing and not skip_missing:
        first = sorted(itertools.chain.from_iterable(missing.values()))[:MAX_LISTED_MISSING]
        counts = "; ".join(f"{len(m)} of {directory / n}" for n, m in missing.items() if m)
        raise DataError(
            f"{num_missing} images of {name}:{target} are missing under {data_root} ({counts}); first "
            f"{len(first)}: {first}. Check --config.data.root, or set --config.data.skip_missing=True "
            "to go on without them"
        )
    if num_missing:
        logging.warning("%s:%s: %d listed images are missing and skipped", name, target, num_missing)
        lost = set().union(*missing.values())
        keep_s = [i for i, p in enumerate(support_paths) if p not in lost]
        keep_t = [i for i, p in enumerate(test_paths) if p not in lost]
        support_paths, support_labels = [support_paths[i] for i in keep_s], support_labels[keep_s]
        test_paths, test_labels = [test_paths[i] for i in keep_t], test_labels[keep_t]

    test_names = folder_names(test_paths, test_labels, benchmark.num_classes)
    all_names = known + [n or f"unknown_{c}" for c, n in enumerate(test_names)][K:]
    support = FileSource([str(data_root / p) for p in support_paths], support_labels, all_names, skip_corrupt)
    test = FileSource([str(data_root / p) for p in test_paths], test_labels, all_names, skip_corrupt)
    per_class = np.bincount(support.labels, minlength=K)
    if (per_class == 0).any():
        empty = [known[c] for c in np.flatnonzero(per_class == 0)]
        raise DataError(f"{name}:{target}: known classes {empty} have no support images left")
    test_known = test.labels < K
    protocol = {
        "benchmark": name,
        "target": target,
        "known_classes": known,
        "support": {
            "lists": list(support_lists),
            "size": len(support),
            "per_class": dict(zip(known, per_class.tolist())),
        },
        "test": {"list": test_list, "known": int(test_known.sum()), "unknown": int((~test_known).sum())},
        "missing": num_missing,
        "few_shot": few_shot,
        "support_images_in_test": len(set(support.paths) & set(test.paths)),
        "lists": str(directory),
        "root": str(data_root),
    }
    return (
        Subset(support, np.arange(len(support)), class_names=known),
        Subset(test, np.arange(len(test)), np.where(test_known, test.labels, UNKNOWN), known),
        protocol,
    )
