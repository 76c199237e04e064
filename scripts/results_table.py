"""docs/results.md from the results sweeps: every number from a run directory of this machine.

Each argument is the --out of a `seqmnist sweep docs/results/NAME.toml --out DIR` (trials of named
presets over seeds). The script copies each run's evidence (config.json, metrics.csv, summary.json;
not the weights) to docs/results/NAME/, groups the trials by preset, and writes the table: the test
accuracy at the epoch of best validation accuracy, mean and sample standard deviation over seeds,
beside the papers' figures.

    python scripts/results_table.py results/rows results/pixel16 results/pixel results/permuted [--tried RUN...]

A run directory among them (the seed's replay, docs/reproduction/runs/rows-28) is one row, read where it is.

A sweep whose own directory is gone is read from its evidence: pass docs/results/NAME instead.
"""

import argparse
import csv
import itertools
import json
import shutil
import statistics
from pathlib import Path

import seqmnist
from seqmnist.benchmark import described
from seqmnist.config import IDENTITY, MEASURED, PRESETS, SETTINGS, Config
from seqmnist.files import markdown_table, write_csv
from seqmnist.plots import minutes_curves

DOCS = Path(__file__).resolve().parents[1] / "docs"
EVIDENCE = ("config.json", "metrics.csv", "summary.json", "permutation.json")

NOT_STATED = "not stated in the paper, to our reading"
# The papers' figures as their tables print them (test accuracy, %), one row a task, with their sources:
# the package's reference/literature.csv (docs/literature.csv). Few say how the reported epoch was chosen;
# ours is the test accuracy at the epoch of best validation accuracy (see the template).
LITERATURE = Path(seqmnist.__file__).with_name("reference") / "literature.csv"


def copy_evidence(sweep: Path) -> Path:
    """docs/results/NAME/: the sweep's tables and each run's small files (nothing to copy where the sweep
    is already docs/results/NAME: the page rebuilt from the evidence alone)."""
    target = DOCS / "results" / sweep.name
    if sweep.resolve() == target.resolve() or (sweep / "config.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "results.md"):
        shutil.copy(sweep / name, target / name)
    for run in sorted((sweep / "runs").iterdir()):
        keep(run, target / "runs" / run.name)
    return target


def keep(run: Path, target: Path) -> None:
    """A run's small files (not its weights) copied to ``target``, unless they are there already."""
    if run.resolve() == target.resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in EVIDENCE:
        if (run / name).exists():
            shutil.copy(run / name, target / name)


def rows_of(sweep: Path) -> list[dict]:
    if (sweep / "config.json").exists():  # one run where its evidence lives (the seed's replay, K = 28)
        return [describe([sweep])]
    with open(sweep / "results.csv") as f:
        trials = list(csv.DictReader(f))
    groups: dict[str, list[Path]] = {}
    for trial in trials:
        run = Path(trial["run_dir"])
        if not run.exists():  # the sweep's own directory is gone: its evidence in docs/results/NAME/runs/
            run = DOCS / "results" / sweep.name / "runs" / run.name
        config = Config.from_file(run / "config.json")
        same_but_seed = json.dumps({k: v for k, v in config.identity().items() if k != "seed"}, sort_keys=True)
        groups.setdefault(same_but_seed, []).append(run)
    return [describe(runs) for runs in groups.values()]


def describe(runs: list[Path]) -> dict:
    """benchmark's row of these runs (the method a user's cell is measured by), and the command that
    trains them today."""
    return {**described(runs), "command": command(Config.from_file(runs[0] / "config.json"))}


def command(config: Config) -> str:
    """The command that trains this run today: its preset, and a flag for each setting the preset has
    changed since (an earlier preset's runs stay reproducible; a preset since removed is written as the
    seed's settings and flags)."""
    preset = config.preset if config.preset in PRESETS else "seed"
    then, now = config.to_flat(), Config.from_settings(preset, seed=config.recipe.seed).to_flat()
    flags = ["--preset", preset]
    for name in (n for n in then if n in IDENTITY and n not in ("preset", "seed")):
        value = then[name]
        if now[name] == value:
            continue
        flag = SETTINGS[name].flag
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:  # a setting the preset has since set and the run left unset: no flag unsets it
            flags += [flag, str(value)]
    return "seqmnist train " + " ".join(flags)


def measured(rows: list[dict]) -> list[dict]:
    """The package's reference/measured.csv: each preset's result and first seed's minutes, which
    `seqmnist presets` and the README show; ``rows``: the presets as they are today."""
    return [
        {
            "preset": r["preset"],
            "runs": len(r["best"]),
            "test_acc": f"{100 * statistics.mean(r['best']):.2f}",
            "sd": f"{100 * statistics.stdev(r['best']):.2f}" if len(r["best"]) > 1 else "",
            "minutes": f"{r['first_minutes']:.1f}",
            "measured_on": r["machine"],
        }
        for r in rows
    ]


BUDGETS = (10, 30, 60, 120)  # minutes


def curve(row: dict) -> dict:
    """The first seed's run of a row as minutes_curves draws it."""
    with open(Path(row["runs"][0]) / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    minutes = list(itertools.accumulate(float(e["seconds"]) / 60 for e in epochs))
    task = row["task"].split(" ")[0]
    return {"task": task, "label": row["preset"] or row["cell"], "minutes": minutes,
            "val": [100 * float(e["val_acc"]) for e in epochs], "test": 100 * row["best"][0]}  # fmt: skip


def budgets(rows: list[dict]) -> str:
    """Per task, the best preset (mean over its seeds) whose first run finished within each budget;
    ``rows``: the presets as they are today."""
    tasks = ("rows", "pixel", "permuted")
    lines = []
    for budget in BUDGETS:
        cells = []
        for task in tasks:
            fits = [r for r in rows if r["task"].startswith(task) and r["first_minutes"] <= budget]
            best = max(fits, key=lambda r: statistics.mean(r["best"]), default=None)
            cells.append(
                f"{100 * statistics.mean(best['best']):.2f}% `{best['preset']}` ({best['first_minutes']:.0f} min)"
                if best
                else "-"
            )
        lines.append([f"{budget} minutes", *cells])
    return markdown_table(["budget", "rows", "pixel", "permuted"], lines, "lrrr")


def markdown(rows: list[dict]) -> str:
    header = ["task", "cell", "layers x hidden", "parameters", "recipe", "epochs", "test acc at best val, % (n)",
              "test acc after the last epoch, %", "minutes per run (seed order)", "command"]  # fmt: skip
    lines = [
        [
            *(r[k] for k in ("task", "cell", "layers x size")),
            f"{r['parameters']:,}",
            r["recipe"],
            r["epochs"],
            f"**{r['test accuracy at best validation, %']}** ({r['n']})",
            r["test accuracy after the last epoch, %"],
            r["minutes"],
            f"`{r['command']} --seed S` (S = {','.join(str(s) for s in r['seeds'])})",
        ]
        for r in rows
    ]
    return markdown_table(header, lines, "lllrlrrrrl")


def tried(runs: list[Path]) -> str:
    """Single runs tried on the way to the presets (copied to docs/results/tried/): what did not make it."""
    header = ["task", "cell", "layers x hidden", "recipe", "epochs", "seed", "test acc at best val, %", "minutes",
              "files"]  # fmt: skip
    lines = []
    for run in runs:
        keep(run, DOCS / "results" / "tried" / run.name)
        r = described([run])
        shown = [r[k] for k in ("task", "cell", "layers x size", "recipe", "epochs")]
        best = r["test accuracy at best validation, %"]
        lines.append([*shown, r["seeds"][0], best, r["minutes"], f"`docs/results/tried/{run.name}`"])
    return markdown_table(header, lines, "llllrrrrl")


def literature() -> str:
    """The papers' pixel and permuted figures side by side, a row per model and source, from LITERATURE."""
    with open(LITERATURE) as f:
        figures = [row for row in csv.DictReader(f) if row["task"] in ("pixel", "permuted")]
    models: dict[tuple[str, str], dict[str, dict]] = {}
    for row in figures:
        models.setdefault((row["source"], row["model"]), {})[row["task"]] = row
    header = ["source", "model", "parameters", "sequential (pixel) MNIST, %", "permuted MNIST, %", "permutation"]
    rows = []
    for (source, model), tasks in models.items():
        any_task = next(iter(tasks.values()))
        parameters = f"{int(any_task['parameters']):,}" if any_task["parameters"] else "-"
        accuracies = [tasks[task]["test_acc"] if task in tasks else "-" for task in ("pixel", "permuted")]
        rows.append([source, model, parameters, *accuracies, any_task["permutation"] or "-"])
    return markdown_table(header, rows, "llrrrl") + f"\n\nWhich epoch each reports: {NOT_STATED}, for every row."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=DOCS / "results.md")
    parser.add_argument("--tried", nargs="*", type=Path, default=[], help="run directories tried and not kept")
    args = parser.parse_args()
    rows = []
    for sweep in args.sweeps:
        copy_evidence(sweep)
        rows += rows_of(sweep)
    text = (DOCS / "results.template.md").read_text()
    text = text.replace("{{OURS}}", markdown(rows)).replace("{{LITERATURE}}", literature())
    presets = [r for r in rows if r["command"] == f"seqmnist train --preset {r['preset']}"]  # as they are today
    text = text.replace("{{TRIED}}", tried(args.tried)).replace("{{BUDGETS}}", budgets(presets))
    args.out.write_text(text)
    write_csv(MEASURED, measured(presets))
    minutes_curves([curve(r) for r in presets], ("rows", "pixel", "permuted"), DOCS / "results" / "minutes.png")
    print(f"{args.out}: {len(rows)} rows")


if __name__ == "__main__":
    main()
