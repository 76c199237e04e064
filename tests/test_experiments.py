"""`seqmnist reproduce --quick` and `seqmnist plot`: the whole pipeline, every file written and well-formed."""

import json

import matplotlib.image
import pytest

from conftest import assert_one_line_error, run_cli
from seqmnist.experiments import (
    ACCURACIES,
    CONFUSION_ROWS,
    SWEEP_ROWS,
    member_config,
    seed_confusion,
    seed_curves,
    seed_sweep,
)

FIGURES = ("epoch_curves.png", "rows_sweep.png", "confusion_ours.png", "confusion_seed.png", "weights.png")


def assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, path
    assert image.std() > 0.01, f"{path} is blank"


def test_seed_reference_numbers_are_packaged():
    assert seed_sweep()[28]["test_acc"] == 0.9607
    assert len(seed_curves(28)) == 100 and float(seed_curves(28)[0]["val_acc"]) == 0.27
    assert seed_confusion(28).shape == (10, 10) and seed_confusion(28).sum() == 10000


@pytest.fixture(scope="module")
def quick(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    result = run_cli("reproduce", "--quick", "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    return out, result


def test_quick_reproduction_writes_every_file(quick):
    out, result = quick
    for rows in SWEEP_ROWS:
        run = out / "runs" / f"rows-{rows:02d}"
        for name in ("config.json", "metrics.csv", "model.safetensors", "summary.json", "checkpoint.safetensors"):
            assert (run / name).exists(), run / name
        assert f"[rows {rows:>2}] epoch   2/2" in result.stdout
    for name in FIGURES:
        assert_png(out / "figures" / name)
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"](figures/{name})" in report
    sweep_rows = [
        line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert len(sweep_rows) >= len(SWEEP_ROWS) + len(CONFUSION_ROWS)
    assert "| 28 | 0.9734 |" in report  # the seed's own number sits beside ours
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    assert sorted(int(k) for k in results["sweep"]) == list(SWEEP_ROWS)
    assert all(0 <= r[key] <= 1 for r in results["sweep"].values() for key in ACCURACIES)
    assert "nan" not in report.lower()


def test_only_the_28_row_member_pays_for_curves():
    assert member_config(28, quick=False).eval_every == 1
    assert member_config(12, quick=False).eval_every == 100 == member_config(12, quick=False).epochs
    assert member_config(12, quick=True).eval_every == member_config(12, quick=True).epochs == 2
    assert member_config(12, quick=False).rows == 12 and member_config(12, quick=False).lr == 0.01


def test_second_run_skips_finished_models(quick, mnist_dir):
    out, _ = quick
    before = (out / "runs" / "rows-28" / "model.safetensors").read_bytes()
    result = run_cli("reproduce", "--quick", "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    assert "epoch" not in result.stdout  # nothing trained again
    assert (out / "runs" / "rows-28" / "model.safetensors").read_bytes() == before


def test_full_run_refuses_a_quick_directory(quick, mnist_dir):
    out, _ = quick
    (out / "runs" / "rows-28" / "summary.json").rename(out / "summary.bak")
    try:
        result = run_cli("reproduce", "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)})
        assert_one_line_error(result, "rows-28 was trained with other settings")
    finally:
        (out / "summary.bak").rename(out / "runs" / "rows-28" / "summary.json")


def test_plot_a_single_run(quick, mnist_dir):
    out, _ = quick
    result = run_cli("plot", out / "runs" / "rows-28", env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert {p.rsplit("/", 1)[1] for p in paths} == {
        "epoch_curves.png",
        "weights.png",
        "confusion.png",
        "row_by_row.png",
    }
    for path in paths:
        assert_png(path)
