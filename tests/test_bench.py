"""`seqmnist bench`: a short real run, its JSON and its table."""

import json
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist.bench import PlainRNN, flops_per_image, format_cells_table, format_seed_table, plain_forms


def test_flop_count_of_one_training_image():
    # forward x U, s W, s V; backward through W and V, and the gradients of U, W, V
    d, h, c, t = 28, 200, 10, 28
    forward = 2 * t * (d * h + h * h + h * c)
    backward = 2 * t * (h * h + h * c) + 2 * t * (d * h + h * h + h * c)
    assert flops_per_image(28, 200) == forward + backward == 7_683_200


def test_plain_baseline_is_the_seed_model(mnist):
    import torch

    from seqmnist.bench import our_model
    from seqmnist.cells import VanillaRNN
    from seqmnist.model import ModelSpec

    plain = PlainRNN(our_model(ModelSpec()))
    ours = VanillaRNN.from_torch(plain.rnn, plain.readout)
    x = mnist.test_x[:50].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(ours.readout.scores(plain(x)), ours(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["vanilla", "irnn", "indrnn", "lstm"])
def test_the_plain_loop_starts_from_our_weights(cell):
    import torch

    from seqmnist.bench import our_model
    from seqmnist.model import ModelSpec

    spec = ModelSpec(cell, 4, 16, 2, True, "last", None, 7)
    ours = our_model(spec)
    plain = PlainRNN(ours)
    x = torch.rand(5, 7, 4)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ours.logits(x, fast=False), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_bench_json_and_table():
    result = run_cli("bench", "--json", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("samples_per_s", "baseline_samples_per_s", "speedup", "gflops", "gemm_peak_gflops", "peak_fraction"):
        assert data[key] > 0, key
    assert data["speedup"] == pytest.approx(data["samples_per_s"] / data["baseline_samples_per_s"])
    assert data["gflops"] == pytest.approx(data["samples_per_s"] * 7_683_200 / 1e9)
    assert data["peak_fraction"] == pytest.approx(data["gflops"] / data["gemm_peak_gflops"])
    assert 0 < data["peak_fraction"] < 1.5
    assert [(r["batch"], r["hidden"]) for r in data["scaling"]] == [(100, 200), (256, 200), (1024, 200), (100, 512)]
    table = format_seed_table(data).splitlines()
    assert "of peak" in table[3] and len(table) == 4 + 2 * len(data["scaling"]) + 2


@pytest.mark.slow
def test_bench_one_cell_and_task():
    result = run_cli(
        "bench", "--cell", "indrnn", "--task", "pixel", "--pixels-per-step", "16", "--seconds", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["comparisons"]
    assert (row["cell"], row["task"], row["steps"], row["inputs"], row["bias"]) == ("indrnn", "pixel", 49, 16, True)
    assert row["samples_per_s"] > 0 and row["path"] == "compiled"
    low, high = row["speedup_range"]  # each round's own ratio
    assert 0 < low <= high
    assert f"{low:.2f}-{high:.2f}" in format_cells_table(json.loads(result.stdout))


@pytest.mark.parametrize("cell", ["lru", "s4d"])
def test_the_linear_cells_plain_forms_start_from_our_weights(cell):
    import torch

    from seqmnist.bench import configuration, our_model

    spec = configuration({"cell": cell, "task": "pixel", "pixels_per_step": 112, "hidden": 8}).model_spec()
    assert (spec.readout, spec.bias) == ("last", True)  # the cell's own readout: it takes no mean-softmax
    ours = our_model(spec)
    x = torch.rand(3, 7, 112)
    with torch.no_grad():
        for form in (None, *plain_forms(ours)):
            torch.testing.assert_close(PlainRNN(ours, form)(x), ours.logits(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bench_times_a_linear_cell_against_its_loop_and_its_plain_parallel_form():
    result = call_main("bench", "--cell", "lru", "--task", "pixel", "--pixels-per-step", "16", "--hidden", "16",
                       "--seconds", "1", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["comparisons"]
    assert (row["cell"], row["readout"], row["path"]) == ("lru", "last", "the compiled scan (scan.cpp) and PyTorch")
    (other,) = row["others"].values()
    assert other["samples_per_s"] > 0 and other["speedup"] == pytest.approx(
        row["samples_per_s"] / other["samples_per_s"]
    )
    assert "plain parallel" in format_cells_table(json.loads(result.stdout))


def test_bench_times_presets_side_by_side():
    """--preset: each preset's own model and batch (6 layers and batches of 32 for IndRNN's recipe), the
    shape flags on top of each."""
    result = call_main("bench", "--preset", "pixel-lru", "pixel-indrnn", "--pixels-per-step", "112", "--hidden", "8",
                       "--seconds", "0.3", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["comparisons"]
    shapes = [(r["cell"], r["layers"], r["hidden"], r["batch"], r["steps"], r["readout"]) for r in rows]
    assert shapes == [("lru", 4, 8, 100, 7, "mean-logits"), ("indrnn", 6, 8, 32, 7, "last")]
    assert all(r["samples_per_s"] > 0 for r in rows)
    table = format_cells_table(json.loads(result.stdout))
    assert "   4x8   100" in table
    # as train runs on the CPU: glibc keeps freed memory for the next step (here, a glibc system)
    assert json.loads(result.stdout)["freed_memory_kept"] is True and "memory: freed memory kept" in table


def test_bench_rejects_a_bad_budget():
    assert_one_line_error(call_main("bench", "--seconds", "-1"), "--seconds must be in (0, 3600]")
    assert_one_line_error(
        call_main("bench", "--all", "--cell", "gru"), "--all runs its own configurations; drop --cell"
    )
    assert_one_line_error(
        call_main("bench", "--all", "--preset", "pixel-lru"), "--all runs its own configurations; drop --preset"
    )


def test_every_bench_script_is_indexed_and_run_by_the_bench_scripts_target():
    """bench/README.md lists each script of bench/ with its smallest run, and `make bench-scripts` runs
    exactly those: no script there that nothing documents or runs."""
    root = Path(__file__).resolve().parents[1]
    index = re.findall(
        r"^\| `([a-z_]+\.py)` \| .* \| `python (bench/[^`]+)` \|$", (root / "bench/README.md").read_text(), re.M
    )
    assert sorted(name for name, _ in index) == sorted(path.name for path in (root / "bench").glob("*.py"))
    target = (root / "Makefile").read_text().split("bench-scripts: setup\n")[1].split("\n\n")[0]
    assert [line.strip().removeprefix("$(PY) ") for line in target.splitlines()] == [run for _, run in index]
