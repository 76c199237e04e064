"""The literature as data: docs/literature.csv (the package's reference/literature.csv) holds every
published figure the results page cites, each with its source, and the page's comparison table is
made from it."""

import csv
import re
from pathlib import Path

import seqmnist

DOCS = Path(__file__).resolve().parents[1] / "docs"
PACKAGED = Path(seqmnist.__file__).with_name("reference") / "literature.csv"


def figures() -> list[dict]:
    with open(DOCS / "literature.csv") as f:
        return list(csv.DictReader(f))


def test_every_figure_has_a_task_an_accuracy_and_a_source():
    assert (DOCS / "literature.csv").resolve() == PACKAGED.resolve()  # one file, found by docs and the package
    rows = figures()
    assert len(rows) >= 40
    for row in rows:
        assert row["task"] in ("rows", "pixel", "permuted") and row["source"].strip(), row
        assert 0 < float(row["test_acc"]) <= 100
        assert row["parameters"] == "" or int(row["parameters"]) > 0
    models = " ".join(row["model"] for row in rows)
    for expected in ("S4", "S5", "LSSL", "Deep IndRNN", "coRNN", "LEM", "UnICORNN", "LMU", "Lipschitz RNN", "TCN",
                     "CKConv", "LSTM", "GRU"):  # fmt: skip
        assert expected in models, expected


def test_the_results_pages_comparison_figures_come_from_the_data():
    page = (DOCS / "results.md").read_text().split("## The papers'")[1]
    table = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| source")]
    assert len(table) >= 30
    data = {(row["source"], row["model"], row["task"]): row["test_acc"] for row in figures()}
    for line in table:
        source, model, _, pixel, permuted, _ = (cell.strip() for cell in line.strip("|").split(" | "))
        for task, figure in (("pixel", pixel), ("permuted", permuted)):
            assert data.get((source, model, task), "-") == figure, (source, model, task)
    assert re.search(r"\| S4 \| - \| 99\.63 \| 98\.70 \| bit-reversal \|", page)
