"""End-of-training evaluation: ``config.eval.methods`` on in- vs out-of-distribution.

Support = (a seeded sample of) the training images of the known classes; test = the known
classes' test images plus the out-of-distribution images: the test split of ``config.ood.path``
(an MNIST-format IDX directory, or any source spec) when given, else the test images of the
held-out classes. Features are the backbone's in eval mode (pooled 512-d, and CSD's six scale
vectors of the layer4 map) on images normalised with ``config.data.normalization``, with the
classifier's logits for the modes that train it (``CLASSIFIER_MODES``: ``msp``, ``maxlogit`` and
``energy`` read the network's own classifier, as OpenOOD and knn-ood); ``evaluate.report``
writes ``W/metrics.json``, ``W/report.md`` and the plots.
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from resend_jax import runtime
from resend_jax.data import UNKNOWN, Source, eval_batches, known_subset, open_source, sample
from resend_jax.data.protocols import class_names_of, parse_classes
from resend_jax.data.transforms import renormalize
from resend_jax.evaluate import report
from resend_jax.evaluate.api import evaluate_features
from resend_jax.evaluate.features import Features
from resend_jax.evaluate.scales import scale_vectors
from resend_jax.mode.model import MODENet

# Modes whose loss trains the classifier; in the others it keeps its random initialisation.
CLASSIFIER_MODES = ("ce",)


@dataclasses.dataclass
class Splits:
    """``train`` (known classes, relabelled 0..K-1), its ``test`` twin, and ``ood``."""

    train: Source
    test: Source
    ood: Source
    ood_name: str


def known_classes(config: ConfigDict, num_classes: int) -> list[str | int]:
    """``config.data.known_classes``; if empty: all with ``config.ood.path``, else the first half."""
    if config.data.known_classes:
        return parse_classes(config.data.known_classes)
    return list(range(num_classes if config.ood.path else -(-num_classes // 2)))


def ood_spec(path: str) -> str:
    """An IDX directory -> its test split; a source spec (``tfds:svhn_cropped:test``) as is."""
    return path if ":" in path else f"idx:{path}:test"


def open_splits(config: ConfigDict) -> Splits:
    data_dir = config.data.get("data_dir") or None
    train = open_source(config.data.train, data_dir=data_dir)
    test = open_source(config.data.test, data_dir=data_dir)
    known = known_classes(config, len(train.class_names))
    if config.ood.path:
        ood, ood_name = open_source(ood_spec(config.ood.path), data_dir=data_dir), ood_spec(config.ood.path)
    else:
        held_out = known_subset(test, [c for c in test.class_names if c not in class_names_of(test, known)])
        ood, ood_name = held_out, f"held-out classes of {config.data.test}: {', '.join(held_out.class_names)}"
    return Splits(known_subset(train, known), known_subset(test, known), ood, ood_name)


def embed_function(model: MODENet, normalization: str = "imagenet"):
    """jitted ``(variables, images) -> (pooled features, CSD scale vectors, classifier logits)``
    in eval mode.

    ``images`` are ImageNet-normalised (``eval_batches``'); converted to ``normalization`` first.
    """

    @runtime.jit
    def embed_batch(variables, images):
        outputs = model.apply(variables, renormalize(images, normalization))
        return outputs["features"], scale_vectors(outputs["map"]), outputs["logits"]

    return embed_batch


def embed(embed_batch, variables: dict[str, Any], source: Source, config: ConfigDict, label=None) -> Features:
    """Features of every image of ``source`` through ``embed_batch``, in fixed-size batches.

    Labels are the source's, or ``label`` for all (``UNKNOWN`` for out-of-distribution data);
    logits only when ``config.mode`` trains the classifier.
    """
    batch_size = config.eval.batch_size
    features, scales, logits, labels, paths = [], [], [], [], []
    batches = eval_batches(source, config.data.image_size, batch_size, config.data.num_workers)
    for batch in tqdm(batches, total=-(-len(source) // batch_size), desc="embed", unit="batch"):
        images, valid = np.asarray(batch["image"]), len(batch["label"])
        images = np.pad(images, [(0, batch_size - valid)] + [(0, 0)] * 3)
        f, s, z = jax.device_get(embed_batch(variables, images))
        features.append(f[:valid])
        scales.append(s[:valid])
        logits.append(z[:valid])
        labels.append(np.asarray(batch["label"]) if label is None else np.full(valid, label))
        paths.extend(str(p) for p in batch["path"])
    with_logits = config.mode in CLASSIFIER_MODES
    return Features(
        np.concatenate(features),
        np.concatenate(labels),
        np.concatenate(scales),
        paths,
        np.concatenate(logits) if with_logits else None,
    )


def evaluate_model(
    config: ConfigDict, model: MODENet, variables: dict[str, Any], splits: Splits, workdir: Path
) -> dict[str, dict]:
    """Scores the test set with ``config.eval.methods``; writes the report; returns the metrics."""
    seed, model = config.seed, embed_function(model, config.data.normalization)
    support = embed(model, variables, sample(splits.train, config.eval.support_size, seed), config)
    known = embed(model, variables, sample(splits.test, config.eval.test_size, seed + 1), config)
    ood = embed(model, variables, sample(splits.ood, config.eval.test_size, seed + 2), config, UNKNOWN)
    test = Features(
        np.concatenate([known.features, ood.features]),
        np.concatenate([known.labels, ood.labels]),
        np.concatenate([known.scales, ood.scales]),
        [*known.paths, *ood.paths],
        None if known.logits is None else np.concatenate([known.logits, ood.logits]),
    )
    methods = [m.strip() for m in config.eval.methods.split(",") if m.strip()]
    options = {name: dict(o) for name, o in config.eval.scores.items()}
    evaluation = evaluate_features(support, test, methods, options=options)
    if jax.process_index() == 0:
        names = [*np.asarray(splits.test.class_names)[known.labels], *(["ood"] * len(ood))]
        setup = {
            "workdir": workdir,
            "mode": config.mode,
            "steps": config.total_steps,
            "normalization": config.data.normalization,
            "in-distribution": f"{config.data.train}: {', '.join(splits.train.class_names)}",
            "out-of-distribution": splits.ood_name,
            "support / known test / ood test images": f"{len(support)} / {len(known)} / {len(ood)}",
            "options": options,
        }
        report.write_outputs(workdir, evaluation, test.paths, names, test.is_known, setup)
    return evaluation.metrics
