"""Grids of trainings: a TOML file of settings expands into trials, which the runner trains, and a
results table gathers them.

    [settings]        # the same for every trial (any train setting, preset included)
    preset = "quick"
    epochs = 1
    [grid]            # every combination of these
    hidden = [32, 64]
    seed = [1, 2]
    [[exclude]]       # drop the combinations that match all of a table's keys (a list: any of)
    hidden = 64
    seed = 2
    [[include]]       # add trials: [settings] with these on top
    cell = "lstm"
    hidden = 64

Every trial is checked before any trains; a bad file is one line naming the file, line and key.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import tomllib
from pathlib import Path

from .config import FORMER_NAMES, IDENTITY, NAMES, current_names
from .errors import SeqmnistError
from .files import markdown_table, read_json, write_csv, write_text
from .runner import Trial
from .runs import Run

TABLES = {"settings": dict, "grid": dict, "include": list, "exclude": list}
SETTINGS = set(NAMES)
RESULT_COLUMNS = ("test_acc", "val_acc", "best_epoch", "best_test_acc", "epochs", "minutes", "run_dir")


class GridFile:
    """A grid file's text and tables, and where each key stands in it (for one-line errors)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.text = self.path.read_text()
            self.data = tomllib.loads(self.text)
        except FileNotFoundError:
            raise SeqmnistError(f"{path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SeqmnistError(f"{path}: cannot read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SeqmnistError(f"{path}: not valid TOML: {exc}") from None

    def line(self, key: str, table: str | None = None) -> int:
        """The line where ``key`` is set (in ``table`` if given), or where table ``key`` starts."""
        current = None
        for number, text in enumerate(self.text.splitlines(), start=1):
            header = re.match(r"\s*\[\[?\s*([\w-]+)\s*\]\]?", text)
            if header:
                current = header[1]
                if key == table == current:
                    return number
            elif (table is None or current == table) and re.match(rf"\s*{re.escape(key)}\s*=", text):
                return number
        return 1

    def error(self, key: str, table: str | None, message: str) -> SeqmnistError:
        return SeqmnistError(f"{self.path}:{self.line(key, table)}: {key}: {message}")


def load_grid(path: Path) -> list[Trial]:
    """The trials a grid file asks for, each checked."""
    grid = GridFile(path)
    for table, value in grid.data.items():
        if table not in TABLES:
            raise grid.error(table, table, f"not a grid table (use {', '.join(TABLES)})")
        if not isinstance(value, TABLES[table]):
            raise grid.error(table, table, "must be a table" if TABLES[table] is dict else "must be [[tables]]")
    settings = _settings(grid, grid.data.get("settings", {}), "settings", lists=False)
    axes = _settings(grid, grid.data.get("grid", {}), "grid", lists=True)
    for key, values in axes.items():
        if not values:
            raise grid.error(key, "grid", "an empty list: the grid would have no trials")
    excludes = [_settings(grid, t, "exclude", lists=None) for t in grid.data.get("exclude", [])]
    includes = [_settings(grid, t, "include", lists=False) for t in grid.data.get("include", [])]
    combos = [current_names(dict(zip(axes, values, strict=True))) for values in itertools.product(*axes.values())]
    settings, excludes, includes = (
        current_names(settings),
        list(map(current_names, excludes)),
        list(map(current_names, includes)),
    )
    combos = [c for c in combos if not any(_matches({**settings, **c}, e) for e in excludes)]
    wanted = [{**settings, **c} for c in combos] + [{**settings, **i} for i in includes]
    if not wanted:
        raise grid.error("grid", "grid", "no trials: the grid is empty, or every trial is excluded")
    trials = []
    for trial in wanted:
        try:
            trials.append(Trial.of(trial))
        except SeqmnistError as exc:
            raise _setting_error(grid, trial, str(exc)) from None
    return list(dict.fromkeys(trials))  # an include may repeat a combination


def _settings(grid: GridFile, table: dict, name: str, lists: bool | None) -> dict:
    """A table's keys checked against the settings; values scalars, or lists (lists=True), or either."""
    for key, value in table.items():
        if FORMER_NAMES.get(key, key) not in SETTINGS:
            raise grid.error(key, name, f"not a setting (settings: {', '.join(sorted(SETTINGS))})")
        is_list = isinstance(value, list)
        if lists is not None and is_list != lists:
            raise grid.error(key, name, "must be a list of values" if lists else "must be one value, not a list")
        for item in value if is_list else [value]:
            if isinstance(item, (dict, list)) or (isinstance(item, float) and not math.isfinite(item)):
                raise grid.error(key, name, f"{item!r} is not a setting's value")
    return table


def _matches(trial: dict, exclude: dict) -> bool:
    return all(trial.get(k) in (v if isinstance(v, list) else [v]) for k, v in exclude.items())


def _setting_error(grid: GridFile, trial: dict, message: str) -> SeqmnistError:
    """A setting the trial's Config refused, located in the file by the flag the message names."""
    flag = re.match(r"--([\w-]+)", message)
    key = flag[1].replace("-", "_") if flag else next(iter(trial), "settings")
    table = next((t for t in ("grid", "settings", "include") if key in (grid.data.get(t) or {})), None)
    if table is None:
        table = next((t for t in ("include",) if any(key in i for i in grid.data.get(t, []))), None)
    return SeqmnistError(f"{grid.path}:{grid.line(key, table)}: {key}: {message}")


# --- the results -------------------------------------------------------------------------------


def result_rows(trials: list[Trial], out: Path) -> list[dict]:
    """One row per trial: the settings the grid gave it (not where its records go), its results, its run
    directory."""
    given = list(dict.fromkeys(k for t in trials for k, _ in t.settings if k in IDENTITY))
    rows = []
    for trial in trials:
        run = Run(out / "runs" / trial.name)
        summary = read_json(run.summary)
        best = summary.get("best") or {}
        settings = dict(trial.settings)
        rows.append(
            {
                **{k: settings.get(k, "") for k in given},
                "test_acc": summary["test_acc"],
                "val_acc": summary.get("val_acc"),
                "best_epoch": best.get("epoch", ""),
                "best_test_acc": best.get("test_acc", ""),
                "epochs": summary["epochs"],
                "minutes": round(summary.get("minutes", math.nan), 3),
                "run_dir": str(run.dir),
            }
        )
    return rows


def write_results(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """results.csv (every trial) and results.md (per setting, mean and spread over seeds)."""
    write_csv(out / "results.csv", rows)
    write_text(out / "results.md", results_markdown(rows))
    return out / "results.csv", out / "results.md"


def results_markdown(rows: list[dict]) -> str:
    """Trials grouped by every setting but the seed: mean +- standard deviation over the seeds."""
    keys = [k for k in rows[0] if k not in (*RESULT_COLUMNS, "seed")]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    header = [*keys, "n", "test acc", "test acc at best val", "val acc", "epochs", "minutes"]
    rows = []
    for group, members in groups.items():
        cells = [*group, len(members)]
        cells += [mean_sd([m[k] for m in members], percent=True) for k in ("test_acc", "best_test_acc", "val_acc")]
        rows.append([*cells, mean_sd([m["epochs"] for m in members]), mean_sd([m["minutes"] for m in members])])
    return markdown_table(header, rows) + "\n"


def mean_sd(values: list, percent: bool = False) -> str:
    """Mean ± sample standard deviation of the values given ("" and None: not measured), to two
    decimals; ``percent`` scales shares to percent."""
    numbers = [float(v) for v in values if v not in ("", None)]
    if not numbers:
        return "-"
    scale = 100 if percent else 1
    mean = statistics.fmean(numbers) * scale
    if len(numbers) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(numbers) * scale:.2f}"
