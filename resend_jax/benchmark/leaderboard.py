"""A leaderboard over seeds: ``aggregate`` runs into mean / std per system, then Markdown and a plot.

A run is ``{system: {metric: value}}`` for one seed (fractions, as ``metrics.json``); the
leaderboard is ``{system: {metric: {"mean", "std", "runs"}}}`` with ``runs`` the per-seed values
in seed order and ``std`` the sample standard deviation (ddof 1; 0 for a single run).
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRICS = {"auroc": "AUROC", "fpr95": "FPR95"}  # what the leaderboard keeps of each evaluation

Leaderboard = dict[str, dict[str, dict[str, float | list[float]]]]


def aggregate(runs: Mapping[int, Mapping[str, Mapping[str, float]]]) -> Leaderboard:
    """``{seed: {system: metrics}}`` -> ``{system: {metric: {"mean", "std", "runs"}}}``.

    Systems keep their first-seen order; a system missing from some seeds aggregates the seeds
    it has (``len(runs)`` says how many).
    """
    systems = list(dict.fromkeys(system for run in runs.values() for system in run))
    board: Leaderboard = {}
    for system in systems:
        board[system] = {}
        for metric in METRICS:
            values = [float(runs[seed][system][metric]) for seed in sorted(runs) if system in runs[seed]]
            board[system][metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "runs": values,
            }
    return board


def markdown(board: Leaderboard, blocks: Mapping[str, Sequence[str]]) -> str:
    """One table per block (``{title: systems}``): mean +- std in percent and the number of seeds;
    a system of one seed shows its value alone (one run has no spread)."""
    lines = []
    for title, systems in blocks.items():
        present = [s for s in systems if s in board]
        if not present:
            continue
        lines += [f"### {title}", "", "| system | " + " | ".join(METRICS.values()) + " | seeds |"]
        lines.append("|" + " --- |" * (len(METRICS) + 2))
        for system in present:
            cells = [_cell(board[system][m]) for m in METRICS]
            lines.append(f"| {system} | " + " | ".join(cells) + f" | {len(board[system]['auroc']['runs'])} |")
        lines.append("")
    return "\n".join(lines)


def _cell(entry: Mapping[str, float | list[float]]) -> str:
    if len(entry["runs"]) == 1:
        return f"{100 * entry['mean']:.2f}"
    return f"{100 * entry['mean']:.2f} +- {100 * entry['std']:.2f}"


def plot(path: Path, board: Leaderboard, blocks: Mapping[str, Sequence[str]]) -> None:
    """Means with +- std error bars, one panel per metric, blocks coloured apart."""
    systems = [s for block in blocks.values() for s in block if s in board]
    colours = {s: f"C{i}" for i, block in enumerate(blocks.values()) for s in block}
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 0.45 * len(systems) + 1.5))
    positions = np.arange(len(systems))[::-1]
    for axis, (metric, name) in zip(np.atleast_1d(axes), METRICS.items()):
        means = [100 * board[s][metric]["mean"] for s in systems]
        stds = [100 * board[s][metric]["std"] for s in systems]
        axis.barh(positions, means, xerr=stds, color=[colours[s] for s in systems], capsize=3)
        axis.set_yticks(positions, systems)
        axis.set_xlabel(f"{name} (%)" + (", higher is better" if metric == "auroc" else ", lower is better"))
        axis.set_xlim(0, 100)
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle("mean +- std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(
    workdir: Path, board: Leaderboard, blocks: Mapping[str, Sequence[str]], setup: Mapping[str, object]
):
    """``leaderboard.json``, ``leaderboard.md`` (with ``setup`` as a list) and ``leaderboard.png``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "leaderboard.json").write_text(json.dumps(board, indent=2) + "\n")
    header = ["# Leaderboard", ""] + [f"- {key}: {value}" for key, value in setup.items()] + [""]
    notes = "AUROC / FPR95 in percent (known images positive, FPR95 Hendrycks'), mean +- std over seeds."
    (workdir / "leaderboard.md").write_text("\n".join(header + [notes, "", markdown(board, blocks)]))
    plot(workdir / "leaderboard.png", board, blocks)
