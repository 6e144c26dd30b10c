"""End-of-training evaluation: feature magnitudes, CCR / FPR at tau, OSCR curves and their table.

Everything here is host-side NumPy on the network's outputs ``{"feature", "logits", "label"}``
for the test split's knowns, negatives and unknowns. The score of a sample is its maximum
softmax probability, times its deep-feature magnitude when trained with the Objectosphere.
"""

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.special import softmax

from resend_jax.evaluate.metrics import auroc, ccr_at_fpr, ccr_at_fpr_nearest, oscr_curve

GROUPS = ("known", "negative", "unknown")
AGAINST = ("unknown", "negative")


def scores(outputs: dict[str, np.ndarray], magnitude: bool = False) -> np.ndarray:
    """Max softmax probability (times ``|F|`` when ``magnitude``)."""
    score = softmax(outputs["logits"].astype(np.float64), axis=-1).max(axis=-1)
    return score * np.linalg.norm(outputs["feature"], axis=-1) if magnitude else score


def target_scores(outputs: dict[str, np.ndarray], magnitude: bool = False) -> np.ndarray:
    """Softmax probability of the labelled class (times ``|F|``): openset-imagenet's thresholds."""
    probabilities = softmax(outputs["logits"].astype(np.float64), axis=-1)
    score = np.take_along_axis(probabilities, outputs["label"][:, None].astype(int), axis=-1)[:, 0]
    return score * np.linalg.norm(outputs["feature"], axis=-1) if magnitude else score


def ccr_fpr_at(tau: float, known_scores, known_correct, unknown_scores) -> tuple[float, float]:
    """(CCR, FPR) at threshold ``tau``: accepted correct knowns and accepted unknowns."""
    return float(np.mean(known_correct & (known_scores >= tau))), float(np.mean(unknown_scores >= tau))


def plot_feature_magnitudes(outputs: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    magnitudes = {g: np.linalg.norm(outputs[g]["feature"], axis=-1) for g in GROUPS}
    bins = np.linspace(0.0, max(m.max() for m in magnitudes.values()), 60)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for group in GROUPS:
        ax.hist(
            magnitudes[group], bins=bins, alpha=0.5, density=True, label=f"{group} ({len(magnitudes[group])})"
        )
    ax.set(xlabel="deep feature magnitude |F(x)|", ylabel="density", title="Deep feature magnitudes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def openset_report(
    outputs: dict[str, dict[str, np.ndarray]],
    workdir: str | Path,
    tau: float,
    fpr_levels: tuple[float, ...] = (1e-3, 1e-2, 1e-1),
    magnitude: bool = False,
    training: dict[str, float] | None = None,
) -> dict[str, float]:
    """Writes the plots, ``oscr.csv`` and ``openset_metrics.json`` into ``workdir``.

    ``outputs`` maps ``known`` / ``negative`` / ``unknown`` to that group's network outputs.
    Per group, ``ccr_at_fpr`` (the highest CCR at FPR <= each level, vast's ``>=``) and
    ``ccr_at_fpr_nearest`` (openset-imagenet's nearest point, null when 10% or more off).
    Returns flat metrics for the log, including the tau whose FPR against unknowns is <= 10%.
    ``training`` (e.g. the epoch whose parameters are evaluated) is recorded under ``training``
    in the file.
    """
    workdir = Path(workdir)
    s = {g: scores(outputs[g], magnitude) for g in GROUPS}
    correct = outputs["known"]["logits"].argmax(-1) == outputs["known"]["label"]
    known_targets = target_scores(outputs["known"], magnitude)
    report, flat, curves = {}, {}, {}
    for group in AGAINST:
        curves[group] = oscr_curve(s["known"], correct, s[group])
        ccr = ccr_at_fpr(s["known"], correct, s[group], fpr_levels)
        nearest = ccr_at_fpr_nearest(known_targets, correct, s[group], fpr_levels)
        is_known = np.r_[np.ones_like(s["known"], bool), np.zeros_like(s[group], bool)]
        report[group] = {
            "ccr_at_fpr": {str(level): ccr[level] for level in fpr_levels},
            "ccr_at_fpr_nearest": {str(level): nearest[level] for level in fpr_levels},
            "auroc": auroc(np.r_[s["known"], s[group]], is_known),
        }
        flat.update({f"{group}/ccr_at_fpr_{level}": ccr[level] for level in fpr_levels})
        flat[f"{group}/auroc"] = report[group]["auroc"]
    report["tau"] = float(tau)
    report["ccr_at_tau"], report["fpr_at_tau"] = ccr_fpr_at(tau, s["known"], correct, s["unknown"])
    fpr, _, thresholds = curves["unknown"]
    tau_10 = float(thresholds[fpr <= 0.1].min())
    flat["tau_fpr_0.1"] = tau_10
    flat["ccr_at_tau_fpr_0.1"], flat["fpr_at_tau_fpr_0.1"] = ccr_fpr_at(
        tau_10, s["known"], correct, s["unknown"]
    )
    flat.update(
        ccr_at_tau=report["ccr_at_tau"], fpr_at_tau=report["fpr_at_tau"], closed_set_accuracy=correct.mean()
    )
    if training:
        report["training"] = dict(training)

    (workdir / "openset_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with (workdir / "oscr.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["against", "fpr", "ccr", "threshold"])
        for group, (fpr, ccr, thresholds) in curves.items():
            writer.writerows([group, *row] for row in zip(fpr, ccr, thresholds))
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for group, (fpr, ccr, _) in curves.items():
        ax.plot(fpr[1:], ccr[1:], label=f"against {group}s ({len(s[group])})")
    ax.set_xscale("log")
    ax.set(xlabel="FPR", ylabel="CCR", title="Open-set classification rate", ylim=(0, 1))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "oscr.png", dpi=120)
    plot_feature_magnitudes(outputs, workdir / "feature_magnitudes.png")
    return flat
