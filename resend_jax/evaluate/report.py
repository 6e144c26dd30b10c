"""Files an evaluation writes: metrics.json, scores.csv, report.md, roc.png and scores.png."""

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resend_jax.evaluate import metrics as metrics_lib  # noqa: E402
from resend_jax.evaluate.api import Evaluation  # noqa: E402

CONVENTIONS = """\
## Conventions

- Every score is oriented so that higher = more normal (known); known test images are the
  positive class, as in the ReSeND reference. Tables are in percent, `metrics.json` in
  fractions.
- `auroc` (AUROC): area under the ROC curve (scikit-learn's `roc_auc_score`; ties as scikit-learn).
- Each paper reports its numbers with its own metric code; `metrics.json` holds them side by
  side under these names, and the table's column titles follow them:
  - `fpr95` (FPR95): Hendrycks' `fpr_and_fdr_at_recall`, the ReSeND reference's: scores sorted
    descending, the distinct threshold whose known recall is closest to 95% (no interpolation;
    the lowest such threshold on a tie), then the fraction of unknown images scored at or
    above it.
  - `fpr95_knn` (FPR95 knn-ood): knn-ood's and MODE's `util/metrics.py`: threshold = the known
    score at index `round(0.05 * N_known)` of the ascending sort, then the fraction of unknown
    images scored strictly above it. It differs from `fpr95` when unknowns score between that
    known and the next lower one (Hendrycks' lower threshold accepts them).
  - `fpr95_openood` (FPR95 OpenOOD): OpenOOD's, unknowns positive: the fraction of known images
    flagged as unknown at the first point of scikit-learn's `roc_curve(is_unknown, -score)`
    whose unknown TPR is >= 95%.
  - `aupr_in` / `aupr_out` (AUPR-in / AUPR-out): average precision (scikit-learn's
    `average_precision_score`) with knowns positive on the score / unknowns positive on the
    negated score.
  - `aupr_in_trapz` / `aupr_out_trapz` (AUPR-in / AUPR-out trapz): OpenOOD's, the trapezoid
    (`sklearn.metrics.auc`) over `precision_recall_curve`, same positives.
  - Open-set training (`openset_metrics.json`): `ccr_at_fpr`, the highest CCR over thresholds
    whose FPR is at most each level (vast's, every distinct score, `>=`); `ccr_at_fpr_nearest`,
    openset-imagenet's: the OSCR point whose FPR is nearest the level (it may lie above it),
    null when 10% or more off, thresholds = the known images' target-class scores, counted
    strictly above.
- Closed-set accuracy: argmax prediction over the known classes, on the known test images only;
  defined for the methods that classify (ReSeND, prototypes, Mahalanobis, the linear probe).
- Features are computed once (eval-mode batch norm, resize to the image size, no crop, ImageNet
  normalisation; MODE models: the setup's `normalization`, CIFAR-10's as MODE's scripts), cached
  in `features/` and shared by every method.
"""


def write_metrics(path: Path, metrics: Mapping) -> None:
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def write_scores_csv(
    path: Path, paths: Sequence[str], labels: Sequence[str], is_known: np.ndarray, scores: Mapping
) -> None:
    """One row per test image: ``path, label, is_known, <one column per method>``."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "is_known", *scores])
        columns = [np.asarray(s) for s in scores.values()]
        for i, (p, label, known) in enumerate(zip(paths, labels, is_known)):
            writer.writerow([p, label, int(known), *(repr(float(c[i])) for c in columns)])


def plot_roc(path: Path, scores: Mapping[str, np.ndarray], is_known: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = metrics_lib.roc_curve(s, is_known)
        ax.plot(fpr, tpr, label=f"{name} ({100 * metrics_lib.auroc(s, is_known):.1f})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    ax.set(xlabel="unknown accepted (FPR)", ylabel="known accepted (TPR)", title="ROC, known positive")
    ax.legend(fontsize="small", title="method (AUROC)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_histograms(path: Path, scores: Mapping[str, np.ndarray], is_known: np.ndarray) -> None:
    columns = min(3, len(scores))
    rows = -(-len(scores) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (name, s) in zip(axes.flat, scores.items()):
        bins = np.histogram_bin_edges(s, bins=40)
        ax.hist(s[is_known], bins=bins, alpha=0.6, density=True, label="known")
        ax.hist(s[~is_known], bins=bins, alpha=0.6, density=True, label="unknown")
        ax.set_title(name)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(scores) :]:
        ax.axis("off")
    fig.supxlabel("score (higher = more normal)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(path: Path, title: str, table: str, setup: Mapping[str, object]) -> None:
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in setup.items()]
    lines += ["", table, "", CONVENTIONS]
    path.write_text("\n".join(lines))


def write_outputs(
    workdir: Path,
    evaluation: Evaluation,
    paths: Sequence[str],
    labels: Sequence[str],
    is_known: np.ndarray,
    setup: Mapping[str, object],
) -> None:
    """All five outputs of one evaluation into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_metrics(workdir / "metrics.json", evaluation.metrics)
    write_scores_csv(workdir / "scores.csv", paths, labels, is_known, evaluation.scores)
    plot_roc(workdir / "roc.png", evaluation.scores, is_known)
    plot_histograms(workdir / "scores.png", evaluation.scores, is_known)
    write_report(
        workdir / "report.md", "Novelty detection", metrics_lib.metrics_table(evaluation.metrics), setup
    )


def preset_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Methods x targets table of AUROC / FPR95 (percent) with the average over targets."""
    targets = list(results)
    methods = list(dict.fromkeys(m for r in results.values() for m in r))
    lines = ["| method | " + " | ".join(targets) + " | average |", "|" + " --- |" * (len(targets) + 2)]
    for method in methods:
        cells = []
        values = [results[t][method] for t in targets if method in results[t]]
        for t in targets:
            m = results[t].get(method)
            cells.append("-" if m is None else f"{100 * m['auroc']:.2f} / {100 * m['fpr95']:.2f}")
        mean = [100 * np.mean([v[k] for v in values]) for k in ("auroc", "fpr95")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean[0]:.2f} / {mean[1]:.2f} |")
    return "AUROC / FPR95 (%), known positive.\n\n" + "\n".join(lines)
