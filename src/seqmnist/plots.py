"""Figures, drawn after the seed's slides: accuracy per epoch, accuracy against rows read,
confusion matrices, the learned weights, and what the model believes row by row.

Every figure function takes plain numbers (lists, arrays) and writes one PNG; :func:`plot_run` reads
a run directory and draws its figures with them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.image import AxesImage
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from .config import Config
from .data import MNIST
from .errors import Log
from .evaluation import step_logits
from .files import atomic_path, read_json
from .measures import measures_for
from .readouts import get_readout
from .runs import Run
from .train import initial_model

SEED_STYLE = {"linestyle": "--", "alpha": 0.8}
START_STYLE = {"color": "tab:gray", "alpha": 0.6, "label": "start of training"}
END_STYLE = {"color": "tab:blue", "label": "end of training"}
READABLE_INPUTS = 8  # fewer inputs a step (pixel tasks): the input weights are a strip, not a picture
LOGIT_TICKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The epochs where ``key`` was measured and its values there (unevaluated epochs hold NaN)."""
    epochs = np.array([int(r["epoch"]) for r in rows])
    values = np.array([float(r[key]) for r in rows])
    measured = ~np.isnan(values)
    return epochs[measured], values[measured]


def _line(ax: plt.Axes, x: np.ndarray, y: np.ndarray, **style) -> None:
    """A series, with a marker at each point when there are few (one epoch is otherwise invisible)."""
    if len(x):
        ax.plot(x, y, marker="o" if len(x) <= 12 else None, ms=4, **style)


def _learning_rate_changes(rows: Sequence[Mapping]) -> bool:
    rates = _series(rows, "lr")[1]
    return len(rates) > 1 and not np.allclose(rates, rates[0], rtol=1e-9, atol=0)


def epoch_curves(ours: Sequence[Mapping], path: Path, seed: Sequence[Mapping] | None = None, title: str = "") -> Path:
    """The figure of :func:`epoch_figure`, as a PNG."""
    return _save(epoch_figure(ours, seed, title), path)


def epoch_figure(ours: Sequence[Mapping], seed: Sequence[Mapping] | None = None, title: str = "") -> plt.Figure:
    """What a run measured per epoch, whatever its preset measured: validation accuracy (every evaluated
    epoch), training accuracy where measured, each with every row read (solid) and as the seed measured
    (dotted) where its readout has that measure; the best-validation epoch marked; the training loss; and
    the learning rate when it changes. A series that was never measured is neither drawn nor in a legend.
    The seed's own curves dashed, when given."""
    changing_lr = _learning_rate_changes(ours)
    heights = [2.2, 1] + ([1] if changing_lr else [])
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(7.2, 2.0 * sum(heights)), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    _accuracy_panel(axes[0], ours, seed)
    _line(axes[1], *_series(ours, "train_loss"), color="tab:red", label="training loss")
    axes[1].set(ylabel="loss")
    if changing_lr:
        _line(axes[2], *_series(ours, "lr"), color="tab:gray", label="learning rate (each epoch's last step)")
        axes[2].set(ylabel="learning rate")
    else:
        rates = _series(ours, "lr")[1]
        if len(rates):
            axes[1].set_title(f"learning rate {rates[0]:g} throughout", fontsize=9)
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    epochs = [int(r["epoch"]) for r in ours]
    last = max(epochs, default=1)
    axes[-1].set(xlabel="epoch", xlim=(0.5, last + 0.5))  # one epoch: a point, not a zoom into it
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.suptitle(textwrap.fill(title or "Accuracy vs epoch", 80), fontsize=10)
    fig.tight_layout()
    return fig


def _accuracy_panel(ax: plt.Axes, ours: Sequence[Mapping], seed: Sequence[Mapping] | None) -> None:
    for key, color, name in (("val_acc", "tab:green", "validation"), ("train_acc", "tab:blue", "training")):
        both = len(_series(ours, f"{key}_as_seed")[0]) > 0
        _line(ax, *_series(ours, key), color=color, label=f"{name}, every row read" if both else name)
        _line(ax, *_series(ours, f"{key}_as_seed"), color=color, linestyle=":", label=f"{name}, as the seed measured")
        if seed:
            seed_epochs = [int(r["epoch"]) for r in seed]
            ax.plot(seed_epochs, [float(r[key]) for r in seed], color=color, label=f"{name} (seed)", **SEED_STYLE)
    epochs, val = _series(ours, "val_acc")
    if len(val):
        best = int(np.argmax(val))  # the first of equals, as training keeps it
        ax.axvline(epochs[best], color="tab:green", alpha=0.4, lw=1)
        ax.plot(
            epochs[best], val[best], marker="*", ms=12, color="tab:green", linestyle="none",
            label=f"best validation {val[best]:.4f} (epoch {epochs[best]})",
        )  # fmt: skip
    ax.set(ylabel="accuracy [0, 1]", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def validation_curves(runs: Mapping[str, Sequence[Mapping]], path: Path, title: str = "") -> Path:
    """Several runs' validation accuracy per epoch on one axis (``runs``: metrics rows by run name), each
    run's best epoch starred. The axis is a logit scale, so runs at 35% and at 99% both show their shape:
    near the top it spreads errors by their ratio, and 99.0% against 99.2% (a fifth fewer errors) does
    not vanish into one line."""
    fig, ax = plt.subplots(figsize=(10, max(4.8, 0.2 * len(runs) + 1.5)))
    for i, (name, rows) in enumerate(runs.items()):
        epochs, val = _series(rows, "val_acc")
        if not len(val):
            continue
        val = np.clip(val, 1e-4, 1 - 1e-4)  # the logit of 0 or 1 is infinite
        style = {"color": plt.get_cmap("tab10")(i % 10), "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}
        best = int(np.argmax(val))  # the first of equals, as training keeps it
        _line(ax, epochs, val, label=f"{name}: {val[best]:.4f} (epoch {epochs[best]})", **style)
        ax.plot(epochs[best], val[best], marker="*", ms=10, color=style["color"], linestyle="none")
    ax.set_yscale("logit")
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in LOGIT_TICKS if low <= t <= high])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="epoch", ylabel="validation accuracy (logit scale)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, title="run: best validation (*)")
    ax.set_title(textwrap.fill(title or "Validation accuracy", 90), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_grid(matrices: Mapping[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Test-set confusion matrices, one panel each (the seed's slides: one per number of rows read),
    titled by its key and its share right."""
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
            title=f"{k}\n{np.trace(m) / m.sum():.2%} of the test set right",
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


def recurrence(start: Sequence[np.ndarray] | None, end: Sequence[np.ndarray], path: Path, cell: str) -> Path:
    """Each layer's recurrence at the start (grey) and end (colour) of training, by its eigenvalues, in
    the view that separates them: real weights alone (IndRNN's w) sorted, beside 1; eigenvalues all just
    inside the unit circle (the linear recurrences, stable by construction) unrolled, as the steps a state
    remembers, 1 / (1 - |lambda|), against the angle it turns by each step; any others on the complex
    plane, with the unit circle, where a state neither fades nor grows."""
    moduli = np.concatenate([np.abs(e) for e in end])
    view = "real" if all(np.abs(np.imag(e)).max(initial=0) == 0 for e in end) else "plane"
    view = "memory" if view == "plane" and moduli.min() >= 0.5 and moduli.max() < 1 else view
    cols = min(3, len(end))
    rows = (len(end) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(end) :]:
        ax.axis("off")
    for layer, ax in enumerate(axes.flat[: len(end)]):
        for values, style in ((start[layer] if start else None, START_STYLE), (end[layer], END_STYLE)):
            if values is None:
                continue
            if view == "real":
                ax.plot(np.sort(values.real), **style)
            else:
                x, y = (np.angle(values), 1 / (1 - np.abs(values))) if view == "memory" else (values.real, values.imag)
                ax.plot(x, y, linestyle="none", marker=".", ms=3, **style)
        _recurrence_axes(ax, view)
        ax.set_title(f"layer {layer + 1}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    what = {
        "real": "recurrent weights w, sorted",
        "memory": "eigenvalues: the steps a state remembers against the angle it turns each step",
        "plane": "eigenvalues on the complex plane (on the unit circle, a state neither fades nor grows)",
    }[view]
    fig.suptitle(textwrap.fill(f"{cell}: each layer's {what}, at the start and end of training", 100), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _recurrence_axes(ax: plt.Axes, view: str) -> None:
    if view == "real":
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set(xlabel="unit (sorted by w)", ylabel="w")
    elif view == "memory":
        ax.set(xlabel="angle per step (radians)", ylabel="steps remembered, 1 / (1 - |eigenvalue|)", yscale="log")
    else:
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", lw=0.6))
        ax.set(xlabel="real part", ylabel="imaginary part", aspect="equal")


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
    ``rows_read`` marks how far down the image a rows-task model reads. The ``last`` readout's
    prediction after step t *is* softmax(z_t), so it gets one panel, not two identical ones."""
    n, steps = len(images), step_probs.shape[0]
    same = get_readout(readout).running_is_step_softmax
    widths = [1, 2.2] if same else [1, 2.2, 2.2]
    fig, axes = plt.subplots(
        n, len(widths), figsize=(4.4 + 3.3 * (len(widths) - 1), 2.6 * n), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )  # fmt: skip
    unit = "rows" if rows_read else "steps"
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray_r")
        if rows_read and rows_read < len(images[i]):  # where reading stops, when it stops before the end
            axes[i, 0].axhline(rows_read - 0.5, color="tab:red", lw=1)
        axes[i, 0].set(xticks=[], yticks=[], title=f"label {labels[i]}")
        guess = int(running[-1, i].argmax())
        panels = (
            [(step_probs[:, i], f"softmax(z_t) after step t: the prediction had it stopped (predicts {guess})")]
            if same
            else [
                (step_probs[:, i], "softmax(z_t) after step t"),
                (running[:, i], f"{readout} so far (predicts {guess})"),
            ]
        )
        for ax, (probs, name) in zip(axes[i, 1:], panels, strict=True):
            image = _belief_map(ax, probs, steps)
            ax.set(xlabel=f"{unit} read", ylabel="digit", yticks=range(10))
            ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=axes[i, -1], fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def _belief_map(ax: plt.Axes, probs: np.ndarray, steps: int) -> AxesImage:
    """Probabilities (steps, 10) as a heatmap: steps along x, digits up the y axis."""
    return ax.imshow(
        probs.T,
        cmap="viridis",
        vmin=0,
        vmax=1,
        aspect="auto",
        origin="lower",
        extent=(0.5, steps + 0.5, -0.5, 9.5),
        interpolation="nearest",
    )


def reading(
    photo: np.ndarray,
    image: np.ndarray,
    running: np.ndarray,
    path: Path,
    unit: str = "row",
    rows_read: int | None = None,
    first_inked: int | None = None,
    title: str = "",
) -> Path:
    """The model reading one of the user's own images: the picture as given, the 28x28 input it became,
    and the belief (the readout's probabilities had the sequence ended there) after every step, as a
    heatmap with step 1 at the top, so on the rows task each row of belief sits beside the input row
    just read. Steps before ``first_inked`` read only blank background and are shaded."""
    steps = len(running)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.2, 1, 1.1]})
    axes[0].imshow(photo, cmap="gray" if photo.ndim == 2 else None)
    axes[0].set(xticks=[], yticks=[], title="the image")
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0.5, 28.5, 28.5, 0.5))
    axes[1].set(title="what the model reads (28x28)", xticks=[], ylabel="row")
    if rows_read:
        axes[1].axhline(rows_read + 0.5, color="tab:red", lw=1)
    heat = axes[2].imshow(
        running, cmap="viridis", vmin=0, vmax=1, aspect="auto", extent=(-0.5, 9.5, steps + 0.5, 0.5),
        interpolation="nearest",
    )  # fmt: skip
    guesses = running.argmax(axis=1)
    axes[2].plot(guesses, np.arange(1, steps + 1), "w.", ms=3)
    axes[2].set_box_aspect(1)  # as tall as the input, so on the rows task each row of belief sits beside its row
    if first_inked and first_inked > 1:
        axes[2].axhspan(0.5, first_inked - 0.5, color="white", alpha=0.55, lw=0)
        axes[2].text(4.5, (first_inked) / 2, f"{unit}s 1-{first_inked - 1}: blank", ha="center", va="center")
    elif first_inked is None:
        axes[2].text(4.5, steps / 2, f"every {unit} read is blank", ha="center", va="center", color="white")
    axes[2].set(
        xticks=range(10), xlabel="digit (white dots: the prediction so far)", ylabel=f"{unit}s read",
        title=f"belief after each {unit}: predicts {int(guesses[-1])} ({running[-1].max():.0%})",
    )  # fmt: skip
    fig.colorbar(heat, ax=axes[2], fraction=0.046)
    if title:
        fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --- the frontier: accuracy against minutes and parameters ------------------------------------------

KINDS = {  # how each kind of point is drawn, and named in the legend
    "yours": {"marker": "*", "s": 160, "color": "tab:red", "label": "your cell"},
    "ours": {"marker": "o", "s": 45, "color": "tab:blue", "label": "seqmnist's presets (this machine)"},
    "paper": {"marker": "s", "s": 30, "color": "0.55", "label": "papers (their machines)"},
}
SIZE_GROUPS = (1e4, 1e5, 1e6)  # STREAM's parameter-count groups: under 10k, 100k, 1M
FLOOR = 90.0  # accuracy (%) below which only your own cell's points are drawn


def frontier(points: Sequence[Mapping], tasks: Sequence[str], path: Path, note: str = "") -> Path:
    """Per task, test accuracy against training minutes on this machine (top; the papers' minutes are
    unknown) and against parameters (bottom, with the papers' points where they state a count), each
    with its frontier: the points no other beats with fewer minutes or parameters. ``points``: dicts
    of task, label, kind (yours, ours, paper), accuracy (%), minutes, parameters; ``note``: a line under
    the title (a quick look says there that it is outside the protocol)."""
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 9), squeeze=False)
    for column, task in enumerate(tasks):
        here = [p for p in points if p["task"] == task]
        measured = [p for p in here if p["kind"] != "paper"]
        counted = [p for p in here if p.get("parameters")]
        floor = min([p["accuracy"] for p in here if p["kind"] == "yours"] + [FLOOR]) - 1.0
        _frontier_panel(axes[0][column], measured, "minutes", floor, f"{task}: accuracy against minutes")
        _frontier_panel(axes[1][column], counted, "parameters", floor, f"{task}: accuracy against parameters")
        axes[1][column].set_xscale("log")
        for bound in SIZE_GROUPS:
            axes[1][column].axvline(bound, color="0.85", linestyle=":", zorder=0)
    handles = [plt.scatter([], [], **{k: v for k, v in style.items()}) for style in KINDS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(KINDS), frameon=False)
    fig.suptitle(
        "Test accuracy at the best validation epoch, and its frontier\n(dotted: 10k, 100k and 1M parameters)"
        + (f"\n{note}" if note else "")
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return _save(fig, path)


def minutes_curves(curves: Sequence[Mapping], tasks: Sequence[str], path: Path) -> Path:
    """What each minute of training buys, a panel per task: each run's validation accuracy after every
    epoch against the minutes trained so far (a line), and its test accuracy at the best validation
    epoch where it ended (a star). ``curves``: dicts of task, label, minutes (cumulative, per epoch),
    val (%, per epoch), test (%). A point inside a run is not what a run planned to stop there reaches
    (its learning rate has not come down yet): the stars are the finished budgets."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks, strict=True):
        here = [c for c in curves if c["task"] == task]
        for i, curve in enumerate(here):
            color = colors[i % len(colors)]
            ax.plot(curve["minutes"], curve["val"], marker=".", color=color, alpha=0.6)
            ax.plot(curve["minutes"][-1], curve["test"], marker="*", ms=12, color=color, label=curve["label"])
        accuracies = [a for c in here for a in [*c["val"], c["test"]]]
        low = np.percentile(accuracies, 10) if accuracies else 90.0  # the slow starts below it cut off
        ax.set(xlabel="training minutes", ylabel="accuracy, %", title=task, ylim=(np.floor(low) - 0.5, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Validation accuracy after each epoch against minutes trained (lines), and test accuracy at the best "
                 "validation epoch (stars)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def _frontier_panel(ax: plt.Axes, points: Sequence[Mapping], axis: str, floor: float, title: str) -> None:
    shown = [p for p in points if p["accuracy"] >= floor]
    best = []
    for p in sorted(shown, key=lambda p: (p[axis], -p["accuracy"])):
        if not best or p["accuracy"] > best[-1]["accuracy"]:
            best.append(p)
    for p in shown:  # every point drawn; named where it is measured here or on the frontier
        style = {k: v for k, v in KINDS[p["kind"]].items() if k != "label"}
        ax.scatter(p[axis], p["accuracy"], zorder=3, **style)
        if p["kind"] != "paper" or p in best:
            ax.annotate(p["label"], (p[axis], p["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if best:
        ax.step([p[axis] for p in best], [p["accuracy"] for p in best], where="post", color="k", alpha=0.4, zorder=2)
    hidden = len(points) - len(shown)
    ax.set_title(title + (f" ({hidden} below {floor:.0f}% not shown)" if hidden else ""), fontsize=9)
    ax.set_xlabel("training minutes (this machine)" if axis == "minutes" else "parameters")
    ax.set_ylabel("test accuracy, %")
    ax.set_ylim(floor, 100)
    ax.grid(alpha=0.3)


# --- a run's figures -------------------------------------------------------------------------------


def cell_figures(run: Run, config: Config, model: torch.nn.Module, note: Log) -> list[Path]:
    """The figures of a model in its cell's terms: its recurrence's eigenvalues at the start and end of
    training (the start redrawn from the run's seed), and its input, recurrent and output weights where
    they are matrices a person can read (not a pixel task's one-pixel-wide input)."""
    figures, paths = run.dir / "figures", []
    if hasattr(model, "recurrence_eigenvalues"):
        start = initial_model(config)[0].recurrence_eigenvalues() if run.metrics.exists() else None
        paths.append(recurrence(start, model.recurrence_eigenvalues(), figures / "recurrence.png", model.name))
    if hasattr(model, "first_layer_weights") and model.spec.inputs >= READABLE_INPUTS:
        paths.append(weights(*model.first_layer_weights(), figures / "weights.png"))
    elif hasattr(model, "first_layer_weights"):
        note(f"each step reads {model.spec.inputs} pixel(s), so the input weights make no figure: no weights.png")
    elif not paths:
        note(f"the {model.name} cell's weights have no figure of their own, so no weights.png")
    return paths


def plot_run(run_dir: Path, data_dir: str | None = None, examples: int = 4, note: Log = print) -> list[Path]:
    """The figures of one run: its curves (beside a reference log where a measure holds the run to
    one), test confusion matrix, first-layer weights, and a few digits step by step. A run without a
    training history (an imported model) gets no curves, and ``note`` says so: a figure left out
    silently looks like a bug."""
    run = Run(run_dir)
    config = run.read_config()
    model = run.load_model(config)
    summary = read_json(run.summary) if run.summary.exists() else None
    figures = run.dir / "figures"
    paths = []
    if run.metrics.exists():
        logged = next((log for m in measures_for(config) if (log := m.reference(config))), {})
        paths.append(
            epoch_curves(
                run.read_metrics(),
                figures / "epoch_curves.png",
                seed=list(logged.values()) or None,
                title=f"Accuracy vs epoch: {config.describe()}",
            )
        )
    else:
        note(f"{run.dir} has no training history (no metrics.csv: an imported model?), so no epoch_curves.png")
    paths += cell_figures(run, config, model, note)
    if summary:
        matrix = np.array(summary["confusion_matrix"])
        paths.append(confusion_grid({config.task.sequencer().describe(): matrix}, figures / "confusion.png"))
    data = MNIST.load(data_dir)
    x = run.sequencer(config).encode(data.test_x[:examples])
    logits = torch.cat(list(step_logits(model, x)), dim=1)
    paths.append(
        step_by_step(
            data.test_x[:examples].numpy(),
            torch.softmax(logits, dim=-1).numpy(),
            model.readout.running(logits).numpy(),
            data.test_y[:examples].tolist(),
            figures / "row_by_row.png",
            rows_read=config.task.rows if config.task.task == "rows" else None,
            readout=config.model.readout,
        )
    )
    return paths
