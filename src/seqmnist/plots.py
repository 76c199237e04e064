"""Figures, drawn after the seed's slides: accuracy per epoch, accuracy against rows read,
confusion matrices, the learned weights, and what the model believes row by row.

Every function takes plain numbers (lists, arrays) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np

from .files import atomic_path

SEED_STYLE = {"linestyle": "--", "alpha": 0.8}


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def epoch_curves(ours: Sequence[Mapping], path: Path, seed: Sequence[Mapping] | None = None, title: str = "") -> Path:
    """Training and validation accuracy per evaluated epoch, as the seed measured (solid) and with
    every row read (dotted); the seed's own curves dashed, when given."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = [r for r in ours if not np.isnan(float(r["train_acc"]))]
    epochs = [int(r["epoch"]) for r in rows]
    for key, color, name in (("train_acc", "tab:blue", "training"), ("val_acc", "tab:green", "validation")):
        ax.plot(
            epochs, [float(r[f"{key}_as_seed"]) for r in rows], color=color, label=f"{name} (ours, as seed measured)"
        )
        ax.plot(epochs, [float(r[key]) for r in rows], color=color, linestyle=":", label=f"{name} (ours, all rows)")
        if seed:
            seed_epochs = [int(r["epoch"]) for r in seed]
            ax.plot(seed_epochs, [float(r[key]) for r in seed], color=color, label=f"{name} (seed)", **SEED_STYLE)
    ax.set(xlabel="epoch", ylabel="accuracy [0, 1]", title=title or "Accuracy vs epoch", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def confusion_grid(matrices: Mapping[int, np.ndarray], path: Path, title: str = "") -> Path:
    """Test-set confusion matrices, one panel per number of rows read, as on the seed's slides."""
    keys = list(matrices)
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys, strict=False):
        m = np.asarray(matrices[k])
        image = ax.imshow(m, cmap="Blues")
        for (i, j), count in np.ndenumerate(m):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if count > m.max() / 2 else "black",
            )
        ax.set(
            title=f"n_steps = {k} (acc {np.trace(m) / m.sum():.3f})",
            xlabel="predicted digit",
            ylabel="true digit",
            xticks=range(10),
            yticks=range(10),
        )
        fig.colorbar(image, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def rows_sweep(ours: Mapping[int, Mapping], path: Path, seed: Mapping[int, Mapping] | None = None) -> Path:
    """Training / validation / test accuracy against the number of rows read: ours as the seed measured
    (solid), the seed's (dashed), and our test accuracy with every row read (dotted)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ks = sorted(ours)
    for key, color in (("train_acc", "tab:blue"), ("val_acc", "tab:purple"), ("test_acc", "tab:red")):
        name = key.removesuffix("_acc").replace("train", "training").replace("val", "validation")
        mine = [ours[k][f"{key}_as_seed"] for k in ks]
        ax.plot(ks, mine, color=color, marker="o", ms=3, label=f"{name} (ours, as seed measured)")
        if seed:
            ax.plot(
                sorted(seed), [seed[k][key] for k in sorted(seed)], color=color, label=f"{name} (seed)", **SEED_STYLE
            )
    ax.plot(ks, [ours[k]["test_acc"] for k in ks], color="black", linestyle=":", label="test (ours, all rows)")
    ax.set(
        xlabel="rows read by the RNN (n_steps)",
        ylabel="accuracy [0, 1]",
        ylim=(0, 1),
        title="Accuracy vs rows read",
        xticks=range(2, 29, 2),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def weights(U: np.ndarray, W: np.ndarray, V: np.ndarray, path: Path, units: int = 8) -> Path:
    """The learned weights: input weights of single hidden units (columns of U), and U, W, V as heatmaps
    (a recurrent vector, indrnn's, as one column; gated cells' matrices hold all their gates)."""
    W = W[:, None] if W.ndim == 1 else W
    fig = plt.figure(figsize=(13, 8))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.3])
    ax = fig.add_subplot(grid[0, :])
    strongest = np.argsort(-np.abs(U).sum(0))[:units]
    for j in strongest:
        ax.plot(range(U.shape[0]), U[:, j], marker=".", label=f"unit {j}")
    ax.set(
        xlabel="input i (pixel of the step)",
        ylabel="U[i, unit]",
        title=f"Input weights of single hidden units (the {units} with the largest |U| column sums)",
    )
    ax.legend(ncol=units, fontsize=7, loc="upper center")
    ax.grid(alpha=0.3)
    for col, (name, m) in enumerate(
        (("U (inputs x hidden)", U), ("W (hidden x hidden)", W), ("V (hidden x classes)", V))
    ):
        ax = fig.add_subplot(grid[1, col])
        limit = np.abs(m).max() or 1.0
        image = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def step_by_step(
    images: np.ndarray,
    step_probs: np.ndarray,
    running: np.ndarray,
    labels: Sequence[int],
    path: Path,
    rows_read: int | None = None,
    readout: str = "mean-softmax",
) -> Path:
    """What the model believes after each step: the image beside softmax(z_t) per step and what the
    readout would predict had the sequence ended there (``running``). Both are (steps, n, 10);
    ``rows_read`` marks how far down the image a rows-task model reads."""
    n, steps = len(images), step_probs.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(11, 2.6 * n), squeeze=False, gridspec_kw={"width_ratios": [1, 2.2, 2.2]})
    unit = "rows" if rows_read else "steps"
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray_r")
        if rows_read:
            axes[i, 0].axhline(rows_read - 0.5, color="tab:red", lw=1)
        axes[i, 0].set(xticks=[], yticks=[], title=f"label {labels[i]}")
        guess = int(running[-1, i].argmax())
        for ax, probs, name in (
            (axes[i, 1], step_probs[:, i], "softmax(z_t) after step t"),
            (axes[i, 2], running[:, i], f"{readout} so far (predicts {guess})"),
        ):
            image = ax.imshow(
                probs.T,
                cmap="viridis",
                vmin=0,
                vmax=1,
                aspect="auto",
                origin="lower",
                extent=(0.5, steps + 0.5, -0.5, 9.5),
                interpolation="nearest",
            )
            ax.set(xlabel=f"{unit} read", ylabel="digit", yticks=range(10), title=name)
        fig.colorbar(image, ax=axes[i, 2], fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)
