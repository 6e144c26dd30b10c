"""Features every score works on: pooled backbone features, CSD scale vectors, labels.

``Features`` is the features-in side of the Python API; ``features_from_images`` computes it
with a ``NoveltyModel`` and ``extract_features`` from a data source, batched with a progress
bar; ``cached`` keeps it in ``OUT/features/`` so a rerun or another method does not recompute.
"""

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from resend_jax.data import UNKNOWN, eval_batches
from resend_jax.evaluate.scales import scale_vectors


@dataclasses.dataclass(eq=False)
class Features:
    """Features of one image set. ``labels`` index the known classes; ``UNKNOWN`` (-1) elsewhere.

    ``scales`` (N, 6, 512) are CSD's scale vectors of the layer4 map (``scales``), optional.
    ``logits`` (N, C) are the network's own classifier outputs, for a model that has a trained
    classifier (``scores.msp`` / ``maxlogit`` / ``energy``), optional; kept in float64 so that
    those scores' softmax and logsumexp are computed in double precision.
    Compared by identity, so scores can cache work per pair of feature sets.
    """

    features: np.ndarray
    labels: np.ndarray
    scales: np.ndarray | None = None
    paths: Sequence[str] | None = None
    logits: np.ndarray | None = None

    def __post_init__(self):
        self.features = np.asarray(self.features, np.float32)
        self.labels = np.asarray(self.labels, np.int64).ravel()
        if self.features.ndim != 2 or len(self.features) != len(self.labels):
            raise ValueError(
                f"Features: expected (N, D) features and N labels, got {self.features.shape} and "
                f"{self.labels.shape}"
            )
        if self.scales is not None:
            self.scales = np.asarray(self.scales, np.float32)
            if self.scales.ndim != 3 or len(self.scales) != len(self.labels):
                raise ValueError(f"Features: expected (N, S, D) scales, got {self.scales.shape}")
        if self.logits is not None:
            self.logits = np.asarray(self.logits, np.float64)
            if self.logits.ndim != 2 or len(self.logits) != len(self.labels):
                raise ValueError(
                    f"Features: expected (N, C) logits for {len(self.labels)} labels, got {self.logits.shape}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_known(self) -> np.ndarray:
        return self.labels != UNKNOWN


def class_means(support: Features) -> np.ndarray:
    """(C, D) mean feature of each known class 0..C-1 (the prototypes)."""
    num_classes = int(support.labels.max()) + 1
    sums = np.zeros((num_classes, support.features.shape[1]))
    np.add.at(sums, support.labels, support.features)
    return (sums / np.bincount(support.labels, minlength=num_classes)[:, None]).astype(np.float32)


def features_from_images(model, images: np.ndarray, labels: np.ndarray) -> Features:
    """Normalised NHWC images of one set -> ``Features`` with CSD scale vectors."""
    features, scales = model.embed_with_map(images, scale_vectors)
    return Features(features, labels, scales)


def extract_features(
    model, source, image_size: int, num_workers: int = 0, desc: str = "embed", with_scales: bool = True
) -> Features:
    """Every image of ``source`` (label = known-class index or -1) -> ``Features``, batched.

    Batches come from ``resend_jax.data.eval_batches`` (resize to ``image_size``, normalise);
    the last one is padded to the model's batch size so that the embed compiles once.
    ``with_scales=False`` skips CSD's scale vectors, 6x the features' size, when no score needs them.
    """
    batch_size = model.batch_size
    features, scales, labels, paths = [], [], [], []
    batches = eval_batches(source, image_size, batch_size, num_workers=num_workers)
    for batch in tqdm(batches, total=-(-len(source) // batch_size), desc=desc, unit="batch"):
        images, valid = np.asarray(batch["image"]), len(batch["label"])
        if valid < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - valid, *images.shape[1:]), images.dtype)])
        if with_scales:
            f, s = model.embed_with_map(images, scale_vectors)
            scales.append(s[:valid])
        else:
            f = model.embed(images)
        features.append(f[:valid])
        labels.append(np.asarray(batch["label"]))
        paths.extend(str(p) for p in batch["path"])
    if not features:
        raise ValueError(f"{desc}: the source has no images")
    scales = np.concatenate(scales) if with_scales else None
    return Features(np.concatenate(features), np.concatenate(labels), scales, paths)


def cached(
    path: Path, fingerprint: dict[str, Any], compute: Callable[[], Features], need_scales: bool = True
) -> Features:
    """Loads ``path`` (.npz) when it was written for the same ``fingerprint`` and holds scale
    vectors if ``need_scales`` (and logs it); else computes it and writes it there."""
    key = json.dumps(fingerprint, sort_keys=True)
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) == key and ("scales" in data.files or not need_scales):
                scales = data["scales"] if "scales" in data.files else None
                logging.info("features: using the cache %s (same model and images)", path)
                return Features(data["features"], data["labels"], scales, data["paths"].tolist())
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    optional = {} if features.scales is None else {"scales": features.scales}
    np.savez(
        tmp,
        features=features.features,
        labels=features.labels,
        paths=np.asarray(features.paths, str),
        fingerprint=np.asarray(key),
        **optional,
    )
    tmp.replace(path)
    return features
