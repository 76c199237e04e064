"""seqmnist benchmark: a cell of one's own, from a module outside the package, on the protocol's tasks;
its rows, CSV, JSON and figure; its runs read again by other commands; the protocol is the presets'."""

import json
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist.benchmark import Benchmark, rows
from seqmnist.config import PRESETS, Config, measured_presets, preset_for

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.slow
def test_a_cell_from_a_module_is_benchmarked_and_its_runs_read_again(mnist_dir, tmp_path):
    code = re.search(r"<!-- cell-example.*?-->\s*```python\n(.*?)```", (DOCS / "cells.md").read_text(), re.S)
    (tmp_path / "bench_cells.py").write_text(code.group(1).replace('@register_cell("mgu")\n', ""))
    env, out = {"PYTHONPATH": str(tmp_path), "SEQMNIST_DATA": str(mnist_dir)}, tmp_path / "out"
    done = run_cli("benchmark", "--cell", "bench_cells:MGU", "--tasks", "rows", "--seeds", "2", "--epochs", "1",
                   "--subset", "2000", "--out", str(out), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "outside the protocol" in done.stdout.lower()
    assert "**Outside the protocol**" in (out / "benchmark.md").read_text()
    written = json.loads((out / "benchmark.json").read_text())
    (row,) = written["rows"]
    assert row["protocol"] == "no: --epochs 1, --subset 2000" and row["n"] == 2 and row["task"] == "rows (28 x 28)"
    assert row["preset"] == "rows-lstm" and row["parameters"] > 0 and len(row["runs"]) == 2
    assert {"cpu", "cores", "torch"} <= set(written["machine"])
    assert (out / "benchmark.csv").read_text().count("\n") == 2  # the header and the row
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").exists() and (out / "results.md").exists()  # what a sweep writes
    run = row["runs"][0]
    evaluated = run_cli("evaluate", run, "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    exported = run_cli("export", run, "--onnx", str(tmp_path / "mgu.onnx"), env=env)
    assert exported.returncode == 0, exported.stderr


def test_the_protocols_recipe_is_the_presets():
    """A built-in cell on the protocol is trained exactly as its preset trains it: rows as rows-lstm,
    pixel and permuted as the LRU's presets; another cell takes the recipe, not the LRU's state size."""
    for cell, task, preset in (("lstm", "rows", "rows-lstm"), ("lru", "pixel", "pixel-lru"),
                               ("lru", "permuted", "permuted-lru")):  # fmt: skip
        (trial,) = Benchmark(cell, (task,), 1).trials()
        assert trial.config().to_flat() == Config.from_settings(preset, seed=1).to_flat()
    (vanilla,) = Benchmark("vanilla", ("pixel",), 1).trials()
    lru = Config.from_settings("pixel-lru", seed=1).to_flat()
    assert vanilla.config().to_flat() == {**lru, "cell": "vanilla", "state": None}


def test_bad_benchmarks_are_one_line():
    assert_one_line_error(call_main("benchmark", "--cell", "lstm", "--tasks", "rows,nope", "--out", "x"), "--tasks")
    assert_one_line_error(call_main("benchmark", "--cell", "lstm", "--seeds", "0", "--out", "x"), "--seeds")
    assert_one_line_error(call_main("benchmark", "--cell", "no_module:X", "--out", "x"), "cannot import no_module")


def test_the_results_pages_rows_are_the_benchmarks_of_the_built_in_cells():
    """For every preset that is a built-in cell's own on its task, `seqmnist benchmark --cell CELL --tasks
    TASK --seeds N` names the very runs the results page was made from (docs/results/*/runs/) and makes
    the same row from them: the page, the protocol and a user's row share one method."""
    page = (DOCS / "results.md").read_text()
    checked = []
    for name, preset in PRESETS.items():
        cell, task = preset.settings.get("cell", "vanilla"), preset.settings.get("task", "rows")
        if preset_for(cell, task)[0] != name:
            continue
        n = int(measured_presets()[name]["runs"])
        trials = Benchmark(cell, (task,), n).trials()
        (folder,) = {run.parents[1] for run in DOCS.glob(f"results/*/runs/{trials[0].name}")}
        (row,) = rows(Benchmark(cell, (task,), n), folder)
        assert row["preset"] == name and row["protocol"] == "yes"
        line = next(line for line in page.splitlines() if f"--preset {name} --seed S" in line)
        assert f"**{row['test accuracy at best validation, %']}** ({n})" in line and f"| {row['minutes']} |" in line
        checked.append(name)
    assert {"rows-lstm", "rows-gru", "pixel-lru", "pixel-s4d", "permuted-s4d"} <= set(checked)
