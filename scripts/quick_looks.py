"""A quick look at every registered cell on every task, as a new user types it, timed on this machine.

    python scripts/quick_looks.py [--out DIR] [--cells lstm,gru] [--tasks rows,pixel]   # docs/quick_looks.md

Each look is ``seqmnist train --cell C --task T --epochs 1 --subset 2000`` in a process of its own (the
settings are the cell's preset for the task, else the task's recipe, with a subset's batches), its wall
seconds measured around the whole command: start, training, validation and test on all 10,000 images
each. The table gives test accuracy and seconds, and the machine; chance is 10%.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from seqmnist.files import markdown_table
from seqmnist.machine import available_cpus, cpu_model
from seqmnist.registry import cell_names
from seqmnist.sequence import TASKS

LOOK = ("--epochs", "1", "--subset", "2000")
CHANCE = 10.0  # %, ten digits


def look(cell: str, task: str, out: Path) -> tuple[float, float]:
    """One look's test accuracy (%) and wall seconds."""
    run = out / f"{cell}-{task}"
    command = [sys.executable, "-m", "seqmnist", "train", "--cell", cell, "--task", task, *LOOK, "--out", str(run)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return 100 * json.loads((run / "summary.json").read_text())["best"]["test_acc"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quick_looks"), help="where the runs go (quick_looks)")
    parser.add_argument("--cells", default=",".join(cell_names()), help="comma-separated (every registered one)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (rows,pixel,permuted)")
    parser.add_argument("--table", type=Path, default=Path("docs/quick_looks.md"), help="the table's file")
    args = parser.parse_args()
    rows = []
    for cell in args.cells.split(","):
        for task in args.tasks.split(","):
            accuracy, seconds = look(cell, task, args.out)
            rows.append([cell, task, f"{accuracy:.1f}", f"{seconds:.0f}"])
            print(f"{cell} {task}: {accuracy:.1f}% in {seconds:.0f} s", flush=True)
    machine = f"{cpu_model()}, {available_cpus()} cores, torch {torch.__version__}"
    table = markdown_table(["cell", "task", "test accuracy, %", "seconds"], rows, "llrr")
    at_chance = [f"{cell} on {task}" for cell, task, accuracy, _ in rows if float(accuracy) < CHANCE + 5]
    args.table.write_text(
        "# A quick look at every cell\n\n"
        f"`seqmnist train --cell CELL --task TASK {' '.join(LOOK)}` for each registered cell and task, one "
        f"process each, timed around the whole command on {machine} (`python scripts/quick_looks.py`). "
        "One epoch over 2,000 images says whether a cell trains, not how good it is: chance is 10%.\n\n"
        f"{table}\n"
        + (
            f"\nWithin 5 points of chance: {', '.join(at_chance)}. A hundred optimiser steps do not carry "
            "these cells' gradients through 784 steps; they need the full recipe's epochs (docs/results.md).\n"
            if at_chance
            else ""
        )
    )
    print(f"{args.table}: {len(rows)} looks on {machine}")


if __name__ == "__main__":
    main()
