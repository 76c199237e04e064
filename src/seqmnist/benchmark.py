"""``seqmnist benchmark``: the field's protocol for any cell, one row per task (docs/protocol.md).

Every cell is run the same way, as the Long Range Arena runs every model: each task has one fixed
recipe and budget. A built-in cell takes its own preset for the task where it has one (config.preset_for:
lstm on rows as rows-lstm, s4d on pixels as pixel-s4d), so its row is the results page's; any other cell
takes the task's (config.TASK_RECIPES: rows-lstm's, pixel-lru's, permuted-lru's). The 50,000/10,000
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
from .config import Config, preset_for
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
    unknown = [task for task in tasks if task not in TASKS]
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
        """Every (task, seed)'s trial (``task``'s alone where given): the cell's own preset for the task
        where it has one, else the task's recipe (its preset's, but the preset's own cell's settings);
        the cell, the seed, the quick look's changes."""
        overrides = dict(self.overrides)
        return [
            Trial.of({"preset": preset_for(self.cell, t)[0], "cell": self.cell, "seed": seed, **overrides})
            for t in ((task,) if task else self.tasks)
            for seed in range(1, self.seeds + 1)
        ]

    @property
    def outside(self) -> str:
        """Empty within the protocol; else the flags that took it outside."""
        return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.overrides)

    def command(self, task: str) -> str:
        quick = "".join(f" --{k.replace('_', '-')} {v}" for k, v in self.overrides)
        return f"seqmnist benchmark --cell {self.cell} --tasks {task} --seeds {self.seeds}{quick}"


def rows(benchmark: Benchmark, out: Path) -> list[dict]:
    """A row per task, in the schema of docs/results.md, from its trials' runs."""
    found = []
    for task in benchmark.tasks:
        runs = [out / "runs" / trial.name for trial in benchmark.trials(task)]
        protocol = "no: " + benchmark.outside if benchmark.outside else "yes"
        found.append({**described(runs), "protocol": protocol, "command": benchmark.command(task)})
    return found


def described(runs: Sequence[Path]) -> dict:
    """One row of docs/results.md from the runs of one setting over seeds: what was trained, the test
    accuracy at each run's best validation epoch (and after its last), the minutes of each, in seed order,
    and the machine the first measured them on. The built-in presets' rows and a benchmark's are this."""
    members = sorted(((Run(run), Config.from_file(Run(run).config)) for run in runs), key=lambda m: m[1].recipe.seed)
    summaries = [read_json(run.summary) for run, _ in members]
    config = members[0][1]
    best = [s["best"]["test_acc"] for s in summaries]
    return {
        "task": task_words(config),
        "cell": config.model.cell,
        "layers x size": f"{config.model.layers} x {config.model.hidden}"
        + (f", state {config.model.state}" if config.model.state else ""),
        "parameters": summaries[0]["parameters"],
        "size group": size_group(summaries[0]["parameters"]),
        "preset": config.preset,
        "recipe": recipe_words(config),
        "epochs": config.recipe.epochs,
        "test accuracy at best validation, %": mean_sd(best, percent=True),
        "n": len(best),
        "test accuracy after the last epoch, %": mean_sd([s["test_acc"] for s in summaries], percent=True),
        "minutes": ", ".join(minutes_of(s) for s in summaries),
        "machine": machine_of(summaries[0]),
        "best": best,
        "first_minutes": summaries[0]["minutes"],
        "seeds": [c.recipe.seed for _, c in members],
        "runs": [str(run.dir) for run, _ in members],
    }


def task_words(config: Config) -> str:
    steps, per_step = config.task.steps_inputs
    if config.task.task == "permuted":
        return f"permuted ({steps} x {per_step}, {config.task.sequencer().permutation})"
    return f"{config.task.task} ({steps} x {per_step})"


def recipe_words(config: Config) -> str:
    r = config.recipe
    recipe = [f"{r.optimizer} {r.lr:g}", r.schedule]
    recipe += [f"warm-up {r.warmup_epochs:g}"] if r.warmup_epochs else []
    recipe += [f"clip {r.clip:g}"] if r.clip else []
    recipe += [f"wd {r.weight_decay:g}"] if r.weight_decay else []
    recipe += [f"dropout {config.model.dropout:g}"] if config.model.dropout else []
    return ", ".join([*recipe, f"batch {r.batch_size}", config.model.readout])


def minutes_of(summary: dict) -> str:
    """A run's minutes, marked * where it trained on one thread (two trials side by side, --jobs 2)."""
    one_thread = all(session["threads"] == 1 for session in summary["sessions"])
    return f"{summary['minutes']:.1f}" + ("*" if one_thread else "")


def machine_of(summary: dict) -> str:
    """Where a run's minutes were measured: its processor, when the run recorded it, and its threads."""
    session = summary["sessions"][0]
    if session.get("cpu"):
        cpu = session["cpu"]
    elif session.get("cpu_capability"):
        cpu = f"a CPU with {session['cpu_capability']} (model not recorded)"
    else:
        cpu = "a CPU (not recorded)"
    threads = session["threads"]
    return f"{cpu}, {threads} thread{'s' if threads > 1 else ''}"


def size_group(parameters: int) -> str:
    """STREAM's groups by parameter count, which rows are compared within."""
    return next((f"< {words}" for bound, words in SIZE_GROUPS if parameters < bound), "1M or more")


def machine() -> dict:
    """The machine these outputs were written on (each row says where its runs' minutes were measured)."""
    return {
        "cpu": cpu_model(),
        "cores": available_cpus(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


TABLE = ("task", "cell", "layers x size", "parameters", "size group", "preset", "recipe", "epochs",
         "test accuracy at best validation, %", "n", "minutes", "protocol", "command")  # fmt: skip


def write_outputs(found: list[dict], out: Path, log: Log = print) -> list[Path]:
    """benchmark.md, benchmark.csv and benchmark.json in ``out``; the Markdown table is logged too."""
    where = "; ".join(dict.fromkeys(row["machine"] for row in found)) + f", torch {torch.__version__}"
    table = markdown_table(TABLE, [[row[k] for k in TABLE] for row in found], "lllrlllrrrrll")
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
    write_json(out / "benchmark.json", {"machine": machine(), "rows": found})
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
    outside = f"the starred cell: outside the protocol ({benchmark.outside})" if benchmark.outside else ""
    paths.append(frontier(points + literature_points(), list(benchmark.tasks), out / "frontier.png", outside))
    return paths
