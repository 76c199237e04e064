"""`seqmnist reproduce --quick` and `seqmnist plot`: the whole pipeline, every file written and well-formed."""

import json

import matplotlib.image
import pytest

from conftest import assert_one_line_error, run_cli
from seqmnist.experiments import ACCURACIES, agreement, member_config
from seqmnist.seed import CONFUSION_ROWS, SWEEP_ROWS, seed_confusion, seed_curves, seed_sweep

# make test's tier: the quick reproduction and its figures
pytestmark = pytest.mark.slow

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
def quick(mnist_dir, seed_models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    result = run_cli(
        "reproduce", "--quick", "--out", out, "--seed-models", seed_models_dir, env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def data_env(mnist_dir, seed_models_dir) -> dict[str, str]:
    """Both kinds of input by environment variable, so that no reproduce here downloads anything."""
    return {"SEQMNIST_DATA": str(mnist_dir), "SEQMNIST_SEED_MODELS": str(seed_models_dir)}


def test_quick_reproduction_writes_every_file(quick):
    out, result = quick
    for rows in SWEEP_ROWS:
        run = out / "runs" / f"rows-{rows:02d}"
        for name in ("config.json", "metrics.csv", "model.safetensors", "summary.json", "checkpoint.safetensors"):
            assert (run / name).exists(), run / name
        assert f"[rows-{rows:02d}] epoch   2/2" in result.stdout
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


def test_every_member_is_the_seed_recipe_evaluated_every_epoch():
    for rows in (12, 28):
        config = member_config(rows, quick=False)
        assert (
            config.run.eval_every == 1
            and config.task.rows == rows
            and config.recipe.lr == 0.01
            and config.recipe.epochs == 100
        )
        assert config.recipe.rng == "numpy" and config.task.input_scale == 256
    assert member_config(12, quick=True).recipe.epochs == 2


def test_agreement_counts_epochs_within_a_tenth_of_a_point():
    seed = seed_curves(28)[:5]
    ours = [
        {"epoch": r["epoch"], "train_acc_as_seed": r["train_acc"] + d, "val_acc_as_seed": r["val_acc"]}
        for r, d in zip(seed, (0, 0.0009, 0.002, 0, -0.0011), strict=True)
    ]
    result = agreement(ours, 28)
    assert result["train_acc"] == {"epochs": 5, "within": 3, "first_off": 3}
    assert result["val_acc"] == {"epochs": 5, "within": 5, "first_off": None}


def test_report_has_the_agreement_and_the_seed_models(quick):
    out, _ = quick
    report = (out / "report.md").read_text()
    assert "## How long the replay follows the seed's logs" in report
    assert "## The seed's own trained models" in report
    for k, log in ((6, "0.2042"), (14, "0.7688"), (28, "0.9607")):
        row = next(line for line in report.splitlines() if line.startswith(f"| {k} | `rnn_step{k}.model`"))
        assert row.count(log) == 2 and row.endswith("| yes |"), row  # the log, and ours of their model: equal
    results = json.loads((out / "results.json").read_text())
    assert results["seed_models"]["28"]["test_acc_as_seed"] == pytest.approx(0.9607, abs=1e-6)
    assert set(results["agreement"]["28"]) == {"train_acc", "val_acc"}


def test_second_run_skips_finished_models(quick, data_env):
    out, _ = quick
    before = (out / "runs" / "rows-28" / "model.safetensors").read_bytes()
    result = run_cli("reproduce", "--quick", "--out", out, env=data_env)
    assert result.returncode == 0, result.stderr
    assert "epoch" not in result.stdout  # nothing trained again
    assert (out / "runs" / "rows-28" / "model.safetensors").read_bytes() == before


def test_full_run_refuses_a_quick_directory(quick, data_env):
    out, _ = quick
    (out / "runs" / "rows-28" / "summary.json").rename(out / "summary.bak")
    try:
        result = run_cli("reproduce", "--out", out, env=data_env)
        assert_one_line_error(result, "was trained with other settings")
    finally:
        (out / "summary.bak").rename(out / "runs" / "rows-28" / "summary.json")


def test_plot_a_single_run(quick, mnist_dir):
    out, _ = quick
    result = run_cli("plot", out / "runs" / "rows-28", env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert {p.rsplit("/", 1)[1] for p in paths} == {
        "epoch_curves.png",
        "recurrence.png",
        "weights.png",
        "confusion.png",
        "row_by_row.png",
    }
    for path in paths:
        assert_png(path)
