"""``seqmnist benchmark``: the field's protocol for any cell, one row per task (docs/protocol.md).

Every cell is run the same way, as the Long Range Arena runs every model: each task has one fixed
recipe and budget, the built-in presets' own (config.TASK_RECIPES: rows as rows-lstm and rows-gru,
pixel and permuted as pixel-lru and permuted-lru), so a row stands beside theirs. The 50,000/10,000
split, the bit-reversal permutation, the test accuracy at the best validation epoch only (the test set
read once, at the end), n seeds as mean ± sd. A quick look may change the budget (``--epochs``,
``--subset``, ``--hidden``, ``--layers``); its rows then say they are outside the protocol. The trials
are a sweep's: the runner trains them (local processes or Ray) and takes up a stopped benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .compare import frontier_points, literature_points
from .config import TASK_RECIPES
from .data import MNIST
from .errors import Log, SeqmnistError
from .files import markdown_table, read_json, write_csv, write_json, write_text
from .machine import available_cpus, cpu_model
from .plots import frontier
from .runner import Cluster, Trial, run_trials
from .runs import Run
from .sequence import TASKS
from .sweep import mean_sd, result_rows, write_results

SIZE_GROUPS = ((10_000, "10k"), (100_000, "100k"), (1_000_000, "1M"))


def check_tasks(tasks: list[str]) -> list[str]:
    unknown = [task for task in tasks if task not in TASK_RECIPES]
    if unknown or not tasks:
        raise SeqmnistError(f"--tasks takes a comma-separated list of {', '.join(TASKS)} (got {','.join(tasks)!r})")
    return list(dict.fromkeys(tasks))


@dataclass(frozen=True)
class Benchmark:
    """One cell on the protocol's tasks, with n seeds and a quick look's changes (``overrides``)."""

    cell: str
    tasks: tuple[str, ...]
    seeds: int
    overrides: tuple[tuple[str, object], ...] = ()

    def trials(self, task: str | None = None) -> list[Trial]:
        """Every (task, seed)'s trial (``task``'s alone where given): the task's recipe (its preset's, but
        the preset's own cell's settings), the cell, the seed, the quick look's changes."""
        overrides = dict(self.overrides)
        return [
            Trial.of({"preset": TASK_RECIPES[t], "cell": self.cell, "seed": seed, **overrides})
            for t in ((task,) if task else self.tasks)
            for seed in range(1, self.seeds + 1)
        ]

    @property
    def outside(self) -> str:
        """Empty within the protocol; else the flags that took it outside."""
        return ", ".join(f"--{k} {v}" for k, v in self.overrides)

    def command(self, task: str) -> str:
        quick = "".join(f" --{k} {v}" for k, v in self.overrides)
        return f"seqmnist benchmark --cell {self.cell} --tasks {task} --seeds {self.seeds}{quick}"


def rows(benchmark: Benchmark, out: Path) -> list[dict]:
    """A row per task, in the schema of docs/results.md, from its trials' summaries."""
    found = []
    for task in benchmark.tasks:
        trials = benchmark.trials(task)
        runs = [Run(out / "runs" / trial.name) for trial in trials]
        summaries = [read_json(run.summary) for run in runs]
        config, best = trials[0].config(), [s["best"]["test_acc"] for s in summaries]
        found.append(
            {
                "task": task,
                "cell": benchmark.cell,
                "layers x size": f"{config.model.layers} x {config.model.hidden}",
                "parameters": summaries[0]["parameters"],
                "size group": size_group(summaries[0]["parameters"]),
                "recipe": f"{TASK_RECIPES[task]}'s",
                "epochs": config.recipe.epochs,
                "test accuracy at best validation, %": mean_sd(best, percent=True),
                "n": len(best),
                "minutes": round(sum(s["minutes"] for s in summaries) / len(summaries), 1),
                "protocol": "no: " + benchmark.outside if benchmark.outside else "yes",
                "command": benchmark.command(task),
                "test_acc_mean": sum(best) / len(best),
                "runs": [str(run.dir) for run in runs],
            }
        )
    return found


def size_group(parameters: int) -> str:
    """STREAM's groups by parameter count, which rows are compared within."""
    return next((f"< {words}" for bound, words in SIZE_GROUPS if parameters < bound), "1M or more")


def machine() -> dict:
    """The machine the minutes were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": available_cpus(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


TABLE = ("task", "cell", "layers x size", "parameters", "size group", "recipe", "epochs",
         "test accuracy at best validation, %", "n", "minutes", "protocol", "command")  # fmt: skip


def write_outputs(found: list[dict], out: Path, log: Log = print) -> list[Path]:
    """benchmark.md, benchmark.csv and benchmark.json in ``out``; the Markdown table is logged too."""
    described = machine()
    where = f"{described['cpu']}, {described['cores']} cores, torch {described['torch']}"
    table = markdown_table(TABLE, [[row[k] for k in TABLE] for row in found], "lllrllrrrrll")
    outside = [row for row in found if row["protocol"] != "yes"]
    warning = (
        "\n\n**Outside the protocol** (its budget was changed): not comparable with the protocol's rows or the "
        "papers'.\n"
        if outside
        else ""
    )
    text = f"# seqmnist benchmark\n\nMeasured on {where} (docs/protocol.md says how).\n\n{table}\n{warning}"
    write_text(out / "benchmark.md", text)
    write_csv(out / "benchmark.csv", [{k: row[k] for k in TABLE} for row in found])
    write_json(out / "benchmark.json", {"machine": described, "rows": found})
    log(table + warning.rstrip())
    log(f"measured on {where}")
    return [out / "benchmark.md", out / "benchmark.csv", out / "benchmark.json"]


def run_benchmark(
    benchmark: Benchmark, out: Path, data: MNIST, cluster: Cluster, beside: Sequence[Path] = (), log: Log = print
) -> list[Path]:
    """Train what is not trained yet, then write the rows, what a sweep writes, and the frontier figure
    (with the runs found under ``beside``: the built-in presets' results, say)."""
    trials = benchmark.trials()
    if benchmark.outside:
        log(f"outside the protocol ({benchmark.outside}): every output says so")
    run_trials(trials, out, data, cluster, log)
    write_results(result_rows(trials, out), out)
    found = rows(benchmark, out)
    paths = write_outputs(found, out, log)
    runs = [Path(run) for row in found for run in row["runs"]]
    points = frontier_points([*runs, *beside], mark=benchmark.cell, note=lambda line: None)
    paths.append(frontier(points + literature_points(), list(benchmark.tasks), out / "frontier.png"))
    return paths
