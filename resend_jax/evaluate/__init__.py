"""Evaluation: novelty scores on shared features, metrics, reports and the CLI.

``python -m resend_jax.evaluate --config configs/eval.py --workdir OUT`` runs it end to end;
``evaluate_features`` is the same from Python on features already computed.
"""

from resend_jax.evaluate.api import Evaluation, evaluate_features, score_features, select_methods
from resend_jax.evaluate.features import UNKNOWN, Features, class_means, features_from_images

__all__ = [
    "UNKNOWN",
    "Evaluation",
    "Features",
    "class_means",
    "evaluate_features",
    "features_from_images",
    "score_features",
    "select_methods",
]
