"""Transfer: a ReSeND checkpoint on classes it was never trained on, without finetuning.

``config.transfer.classes`` (Fashion-MNIST 6-9 when the relation trained on 0-5) are split
every way into ``len - unknown`` known and ``unknown`` unknown classes (four 3-vs-1 splits).
For each number of support images per known class (``shots``; 0 = every training image,
``benchmarks.few_shot_indices``' draw, seeded with the run's seed) each split is scored on the
test images of those classes; a system's entry is the mean AUROC and FPR95 over the splits.
With ``shots`` support images per class, KNN's ``k`` is at most ``shots``.

The training and test images of the transfer classes are embedded once per checkpoint
(cached in ``workdir/features``), then each split is a relabelling of them.
"""

import itertools
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from resend_jax.data import UNKNOWN, known_subset, open_source, sample
from resend_jax.data.benchmarks import few_shot_indices
from resend_jax.data.protocols import fingerprint, parse_classes
from resend_jax.evaluate import api, features
from resend_jax.evaluate.run import model_identity
from resend_jax.inference import load_model

METRICS = ("auroc", "fpr95")


def splits(num_classes: int, unknown: int) -> list[tuple[list[int], list[int]]]:
    """Every split of positions ``0..num_classes-1`` into (known, unknown) with ``unknown`` unknowns."""
    if not 0 < unknown < num_classes:
        raise ValueError(f"config.transfer.unknown must be in [1, {num_classes - 1}], got {unknown}")
    result = []
    for held_out in itertools.combinations(range(num_classes), unknown):
        result.append(([c for c in range(num_classes) if c not in held_out], list(held_out)))
    return result


def shots_of(config: ConfigDict) -> list[int]:
    try:
        shots = [int(s) for s in str(config.transfer.shots).split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(
            f"config.transfer.shots must be comma-separated integers, got {config.transfer.shots!r}"
        ) from e
    if any(s < 0 for s in shots):
        raise ValueError(f"config.transfer.shots must be >= 0 (0 = all), got {config.transfer.shots!r}")
    return shots


def row_name(system: str, shots: int) -> str:
    return f"{system} ({shots if shots else 'all'}-shot)"


def embed(
    config: ConfigDict, checkpoint: Path, workdir: Path
) -> tuple[features.Features, features.Features, object]:
    """Features of the transfer classes' training and test images (labels: their positions)."""
    model = load_model(str(checkpoint), batch_size=config.evaluation.batch_size)
    classes = parse_classes(config.transfer.classes)
    identity = {"model": model_identity(model), "image_size": model.image_size}
    result = []
    sizes = {"support": config.data.support_size, "test": 2 * config.data.test_size}
    for role, spec in [("support", config.data.train), ("test", config.data.test)]:
        subset = sample(known_subset(open_source(spec), classes), sizes[role], 0)
        result.append(
            features.cached(
                workdir / "features" / f"{role}.npz",
                {**identity, "data": fingerprint(subset)},
                lambda s=subset, r=role: features.extract_features(
                    model, s, model.image_size, desc=f"embed transfer {r}", with_scales=False
                ),
                need_scales=False,
            )
        )
    return result[0], result[1], model


def relabel(labels: np.ndarray, known: list[int], num_classes: int) -> np.ndarray:
    """Positions -> 0..len(known)-1 for the known ones (in ``known``'s order), ``UNKNOWN`` else."""
    mapping = np.full(num_classes, UNKNOWN, np.int64)
    mapping[known] = np.arange(len(known))
    return mapping[labels]


def transfer_scores(
    config: ConfigDict, checkpoint: Path, seed: int, scores: list[str], workdir: Path
) -> dict[int, dict[str, dict[str, float]]]:
    """``{shots: {score: {"auroc", "fpr95"}}}``, each the mean over the splits."""
    pool, test, model = embed(config, checkpoint, workdir)
    num_classes = len(parse_classes(config.transfer.classes))
    result = {}
    for shots in shots_of(config):
        options = {name: dict(o) for name, o in config.evaluation.scores.items()}
        if shots:  # a k-th neighbour beyond a class's support images would compare across classes
            options["knn"]["k"] = min(options["knn"]["k"], shots)
        per_split = {score: {m: [] for m in METRICS} for score in scores}
        for known, _ in splits(num_classes, config.transfer.unknown):
            indices = np.flatnonzero(np.isin(pool.labels, known))
            if shots:
                indices = indices[few_shot_indices(pool.labels[indices], shots, seed)]
            support = features.Features(
                pool.features[indices], relabel(pool.labels[indices], known, num_classes)
            )
            queries = features.Features(test.features, relabel(test.labels, known, num_classes))
            metrics = api.evaluate_features(support, queries, scores, model, options).metrics
            for score in scores:
                for m in METRICS:
                    per_split[score][m].append(metrics[score][m])
        result[shots] = {
            score: {m: float(np.mean(values)) for m, values in by_metric.items()}
            for score, by_metric in per_split.items()
        }
    return result
