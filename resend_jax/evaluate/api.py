"""Python API, features in, scores and metrics out (for notebooks)::

from resend_jax.evaluate import Features, evaluate_features, features_from_images
support = features_from_images(model, support_images, support_labels)   # labels 0..C-1
test = features_from_images(model, test_images, test_labels)            # -1 = unknown
result = evaluate_features(support, test, model=model)                  # every method
result.metrics["resend"]["auroc"], result.scores["knn"]
"""

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from resend_jax.evaluate import metrics as metrics_lib
from resend_jax.evaluate import scores as scores_lib
from resend_jax.evaluate.features import UNKNOWN, Features


@dataclasses.dataclass
class Evaluation:
    """Per method: (N,) test scores, closed-set predictions (or None) and the metrics dict."""

    scores: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray | None]
    metrics: dict[str, dict]


def _missing(score: scores_lib.Score, support: Features, test: Features, model) -> list[str]:
    has = {
        "logits": test.logits is not None,
        "model": model is not None,
        "scales": support.scales is not None and test.scales is not None,
        "two_classes": int(support.labels.max()) >= 1,
    }
    return [scores_lib.NEEDS[need] for need in score.needs if not has[need]]


def check_method_names(methods: Sequence[str]) -> None:
    """Raises on a name no score is registered under."""
    registry = scores_lib.registry()
    unknown = [m for m in methods if m not in registry]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}: choose from {list(registry)}, e.g. --config.methods=resend,knn"
        )


def select_methods(methods: Sequence[str] | None, support: Features, test: Features, model=None) -> list[str]:
    """The named methods (each checked), or every default method that applies (the others logged)."""
    registry = scores_lib.registry()
    if not methods:
        chosen = []
        for name, s in registry.items():
            missing = _missing(s, support, test, model)
            if missing:
                logging.info("method %s skipped: it needs %s", name, ", ".join(missing))
            elif not s.default:
                logging.info("method %s skipped: it runs only when named in the methods", name)
            else:
                chosen.append(name)
        return chosen
    check_method_names(methods)
    for name in methods:
        missing = _missing(registry[name], support, test, model)
        if missing:
            raise ValueError(f"method {name!r} needs {', '.join(missing)}; drop it from the methods")
    return list(methods)


def check_labels(support_labels: np.ndarray, test_labels: np.ndarray) -> None:
    """Every known class has support images; the test set has knowns and unknowns."""
    support_labels, test_labels = np.asarray(support_labels), np.asarray(test_labels)
    if not len(support_labels) or (support_labels < 0).any():
        raise ValueError("the support set must be non-empty and all of known classes (labels >= 0)")
    num_classes = int(max(support_labels.max(), test_labels.max(initial=0))) + 1
    absent = sorted(set(range(num_classes)) - set(support_labels.tolist()))
    if absent:
        raise ValueError(
            f"known classes {absent} have test images but no support images: add them to the "
            "support set or drop them from the known classes"
        )
    known = int((test_labels != UNKNOWN).sum())
    if known == 0 or known == len(test_labels):
        raise ValueError(
            f"the test set has {known} known and {len(test_labels) - known} unknown images; novelty metrics "
            "need both: change the test set or the known classes"
        )


def score_features(
    support: Features,
    test: Features,
    methods: Sequence[str] | None = None,
    model=None,
    options: Mapping[str, Mapping] | None = None,
) -> dict[str, scores_lib.ScoreOutput]:
    """``{method: (scores, predictions or None)}`` on the same features; higher = more normal.

    ``options`` maps a method to its keyword options (``scores.default_options()`` lists them).
    From 10^8 support x test pairs (minutes on a CPU), a progress bar names the method running.
    """
    registry = scores_lib.registry()
    options = dict(options or {})
    results = {}
    chosen = select_methods(methods, support, test, model)
    progress = tqdm(chosen, desc="scores", unit="method", disable=len(support) * len(test) < 10**8)
    for name in progress:
        progress.set_postfix_str(name)
        kwargs = dict(options.get(name, {}))
        unknown = set(kwargs) - set(registry[name].options())
        if unknown:
            raise ValueError(
                f"{name}: unknown options {sorted(unknown)}; it takes {registry[name].options()}"
            )
        if "model" in registry[name].needs:
            kwargs["model"] = model
        scores, predictions = registry[name].fn(support, test, **kwargs)
        results[name] = (np.asarray(scores), None if predictions is None else np.asarray(predictions))
    return results


def evaluate_features(
    support: Features,
    test: Features,
    methods: Sequence[str] | None = None,
    model=None,
    options: Mapping[str, Mapping] | None = None,
) -> Evaluation:
    """Scores every method and computes its metrics (``metrics.compute_metrics``)."""
    check_labels(support.labels, test.labels)
    results = score_features(support, test, methods, model, options)
    return Evaluation(
        scores={name: s for name, (s, _) in results.items()},
        predictions={name: p for name, (_, p) in results.items()},
        metrics={
            name: metrics_lib.compute_metrics(s, test.is_known, p, None if p is None else test.labels)
            for name, (s, p) in results.items()
        },
    )
