"""Runs side by side (``seqmnist compare``): the settings in which they differ, their results, and their
validation curves on one figure.

Runs are found in the folders given: a run folder itself (it holds config.json), or a folder holding
runs at any depth down to ``SEARCH_DEPTH`` (a sweep's OUT/runs/NAME, reproduce's OUT/runs/rows-K, a
folder of sweeps), so single runs, sweeps and reproductions mix freely. Runs of any age are read: a
config.json of either form (seqmnist.config), and an unfinished run shows its curve without a test
accuracy. A run without metrics.csv has nothing to compare and is left out with a note.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import plots
from .config import IDENTITY, Config
from .errors import SeqmnistError
from .files import markdown_table, write_csv
from .plots import validation_curves
from .runs import Run

LITERATURE = Path(__file__).with_name("reference") / "literature.csv"  # the papers' figures, with sources
SEARCH_DEPTH = 4  # folders below a given folder searched for runs (docs/results holds them 3 down)
ACCURACIES = ("val acc at best", "test acc at best", "test acc last")  # result columns shown to 4 decimals

Note = Callable[[str], None]


@dataclass
class ComparedRun:
    """What a comparison reads of one run."""

    dir: Path
    settings: dict  # every setting by its flat name; the table compares those in config.IDENTITY
    metrics: list[dict]
    summary: dict | None  # None: unfinished
    planned_epochs: int

    def best(self) -> dict:
        """The best-validation epoch and its accuracies: the summary's, or from metrics.csv while the run
        is unfinished (the first of equal accuracies, as training keeps it)."""
        if self.summary and self.summary.get("best"):
            return self.summary["best"]
        measured = [row for row in self.metrics if not math.isnan(row["val_acc"])]
        if not measured:
            return {}
        top = max(measured, key=lambda row: row["val_acc"])
        return {"epoch": int(top["epoch"]), "val_acc": top["val_acc"]}

    def results(self) -> dict:
        """The table's result columns (None: not known, as for an unfinished run's test accuracy)."""
        best, summary = self.best(), self.summary or {}
        done = len(self.metrics)
        minutes = summary.get("minutes", sum(row["seconds"] for row in self.metrics) / 60)
        return {
            "epochs run": done if self.summary else f"{done} of {self.planned_epochs}",
            "best epoch": best.get("epoch"),
            "val acc at best": best.get("val_acc"),
            "test acc at best": best.get("test_acc"),
            "test acc last": summary.get("test_acc"),
            "minutes": minutes,
        }


@dataclass
class Comparison:
    """The runs compared, each under its label, and the settings in which they differ."""

    runs: dict[str, ComparedRun]
    differing: list[str]

    def rows(self) -> list[dict]:
        """One row per run: its label, the settings that differ, its results."""
        return [
            {"run": label, **{k: run.settings[k] for k in self.differing}, **run.results()}
            for label, run in self.runs.items()
        ]

    def table(self) -> str:
        """The rows as a Markdown table, aligned for a terminal: numbers to the right, words to the left."""
        rows = self.rows()
        header = list(rows[0])
        align = "".join("r" if all(_is_number(row[k]) for row in rows if row[k] is not None) else "l" for k in header)
        return markdown_table(header, [[_cell(k, row[k]) for k in header] for row in rows], align, padded=True) + "\n"

    def curves(self) -> dict[str, list[dict]]:
        return {label: run.metrics for label, run in self.runs.items()}


def _cell(column: str, value: object) -> str:
    """A value in the table's words: accuracies to 4 decimals, minutes to 1, settings as given."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if column in ACCURACIES else f"{value:.1f}" if column == "minutes" else f"{value:g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- finding and reading runs ----------------------------------------------------------------------


def find_run_dirs(path: Path) -> list[Path]:
    """The run folders at or under ``path`` (down to SEARCH_DEPTH levels; never inside a run), sorted."""
    if not path.exists():
        raise SeqmnistError(f"{path}: no such folder")
    if not path.is_dir():
        raise SeqmnistError(f"{path}: a file, not a run folder or a folder of runs")
    if Run(path).config.is_file():
        return [path]
    found, level = [], [path]
    for _ in range(SEARCH_DEPTH):
        level = [child for folder in level for child in _subfolders(folder)]
        found += [folder for folder in level if Run(folder).config.is_file()]
        level = [folder for folder in level if not Run(folder).config.is_file()]
    if not found:
        raise SeqmnistError(
            f"{path}: no runs in it (a run folder holds config.json; searched {SEARCH_DEPTH} levels down)"
        )
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    except OSError:  # unreadable: nothing found there
        return []


def read_run(directory: Path) -> ComparedRun:
    """A run's settings, metrics and (when finished) summary; a run with nothing to compare is refused."""
    run = Run(directory)
    config = run.read_config()
    if not run.metrics.exists():
        raise SeqmnistError(f"{directory}: no metrics.csv (no epoch finished yet, or an imported model)")
    metrics = run.read_metrics()
    if not metrics:
        raise SeqmnistError(f"{run.metrics}: no epoch in it")
    return ComparedRun(directory, config.to_flat(), metrics, run.finished_summary(config), config.recipe.epochs)


def gather(paths: list[Path], note: Note) -> dict[Path, ComparedRun]:
    """Every usable run under ``paths`` (each once, by the path it was found by); the others are left
    out with a note, unless none is usable."""
    directories: dict[Path, Path] = {}
    for path in paths:
        for directory in find_run_dirs(path):
            directories.setdefault(directory.resolve(), directory)
    usable, refused = {}, []
    for directory in directories.values():
        try:
            usable[directory] = read_run(directory)
        except SeqmnistError as exc:
            refused.append(str(exc))
    if not usable:
        more = f" (and {len(refused) - 1} more runs like it)" if len(refused) > 1 else ""
        raise SeqmnistError(f"no run to compare: {refused[0]}{more}")
    for reason in refused:
        note(f"left out {reason}")
    for run in usable.values():
        if run.summary is None:
            note(f"{run.dir} is unfinished ({len(run.metrics)} of {run.planned_epochs} epochs): no test accuracy")
    return usable


def labels(directories: list[Path]) -> list[str]:
    """Each run's name in the table and the legend: its folder's name, or where two share one, its path
    below the folder all have in common."""
    names = [d.resolve().name for d in directories]
    if len(set(names)) == len(names):
        return names
    absolute = [d.resolve() for d in directories]
    common = Path(os.path.commonpath(absolute))
    return [str(d.relative_to(common)) for d in absolute]


def differing_settings(runs: list[ComparedRun]) -> list[str]:
    """The settings (flat names, in the declared order) whose values are not the same in every run."""
    return [k for k in IDENTITY if len({run.settings[k] for run in runs}) > 1]  # 1 and 1.0 are one value


def comparison(paths: list[Path], note: Note = print) -> Comparison:
    """The usable runs under ``paths`` by label, and the settings in which they differ."""
    runs = list(gather(paths, note).values())
    return Comparison(dict(zip(labels([run.dir for run in runs]), runs, strict=True)), differing_settings(runs))


def frontier_points(paths: list[Path], mark: str | None = None, note: Note = print) -> list[dict]:
    """The finished runs of the protocol's tasks under ``paths`` (not 16 pixels a step, say) as the frontier
    figure's points, one per set of settings (the mean over its seeds): named by their preset, or their
    cell and a * where their settings are not a preset's; ``mark``'s cell drawn as yours."""
    groups: dict[str, list[ComparedRun]] = {}
    for run in gather(paths, note).values():
        one_pixel = run.settings["task"] == "rows" or run.settings["pixels_per_step"] in (None, 1)
        if run.summary and run.summary.get("best") and one_pixel:  # the protocol's tasks alone
            same = {k: v for k, v in run.settings.items() if k in IDENTITY and k != "seed"}
            groups.setdefault(json.dumps(same, sort_keys=True, default=str), []).append(run)
    points = []
    for runs in groups.values():
        settings = runs[0].settings
        named = _preset_or_cell(settings)
        points.append(
            {
                "task": settings["task"],
                "label": named if len(runs) == 1 else f"{named} (n={len(runs)})",
                "kind": "yours" if settings["cell"] == mark else "ours",
                "accuracy": 100 * statistics.fmean(r.summary["best"]["test_acc"] for r in runs),
                "minutes": statistics.fmean(r.summary["minutes"] for r in runs),
                "parameters": runs[0].summary.get("parameters"),
            }
        )
    return points


def _preset_or_cell(settings: dict) -> str:
    """A run's preset where its settings are still the preset's (but the seed), else its cell and a *."""
    try:
        same = Config.from_settings(settings["preset"], seed=settings["seed"]).identity() == (
            Config.from_flat(settings).identity()
        )
    except SeqmnistError:  # a preset since renamed or removed
        same = False
    return settings["preset"] if same and settings["preset"] != "seed" else f"{settings['cell']}*"


def literature_points() -> list[dict]:
    """The papers' figures (reference/literature.csv) as the frontier figure's points."""
    with open(LITERATURE) as f:
        return [
            {
                "task": row["task"],
                "label": row["model"],
                "kind": "paper",
                "accuracy": float(row["test_acc"]),
                "parameters": int(row["parameters"]) if row["parameters"] else None,
            }
            for row in csv.DictReader(f)
        ]


def compare(paths: list[Path], out: Path, note: Note = print, frontier: bool = False) -> tuple[str, list[Path]]:
    """The comparison's table (returned), and its files in ``out``: compare.csv (the table's rows),
    compare.png (the validation curves) and, with ``frontier``, frontier.png (accuracy against minutes
    and parameters, beside the papers')."""
    result = comparison(paths, note)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeqmnistError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    write_csv(out / "compare.csv", result.rows())
    figure = validation_curves(result.curves(), out / "compare.png", f"Validation accuracy of {len(result.runs)} runs")
    paths_written = [out / "compare.csv", figure]
    if frontier:
        points = frontier_points(paths, note=lambda line: None) + literature_points()
        tasks = [task for task in ("rows", "pixel", "permuted") if any(p["task"] == task for p in points)]
        paths_written.append(plots.frontier(points, tasks, out / "frontier.png"))
    return result.table(), paths_written
