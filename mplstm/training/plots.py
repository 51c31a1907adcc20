"""Training curves and confusion matrices as PNG.

Figures are built with `matplotlib.figure.Figure`, not pyplot: no GUI backend, no global
figure registry to leak into, safe in worker threads and headless machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and validation, from `history` rows.

    Each row has `epoch` and any of train_loss, val_loss, train_acc, val_acc.
    """
    path = Path(path)
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            rows = [r for r in history if f"{split}_{metric}" in r]
            if rows:
                ax.plot(
                    [r["epoch"] for r in rows],
                    [r[f"{split}_{metric}"] for r in rows],
                    style,
                    markersize=3,
                    label=split,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylim(0, 1.02)
    fig.suptitle("training curves")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(
    matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "confusion matrix"
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts."""
    path = Path(path)
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    n = len(labels)
    size = min(max(4.0, 0.45 * n + 2), 16.0)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:  # counts stay legible up to about this many classes
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_roc(
    curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, title: str = "ROC"
) -> Path:
    """Verification ROC curves, TAR against FAR (log scale), one line per named curve."""
    path = Path(path)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, curve in curves.items():
        far = np.maximum(np.asarray(curve["far"], float), 1e-5)
        ax.plot(far, curve["tar"], label=name)
    for far in (0.01, 0.001):
        ax.axvline(far, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-accept rate (impostor pairs accepted)")
    ax.set_ylabel("true-accept rate (genuine pairs accepted)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
