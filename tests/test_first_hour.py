"""A new user's first hour: the figures of a quick run, the messages of the commonest mistakes, their own
images read row by row. Real runs trained once per module, the real command line in this process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist import plots
from seqmnist.config import Config, RecipeSettings
from seqmnist.recipes import learning_rate
from seqmnist.runs import Run, load_run

DIGITS = Path(__file__).resolve().parents[1] / "docs" / "predict" / "digits"
PHOTO = DIGITS / "3-hard-pencil.jpg"  # a pencil 3 photographed on grey paper


@pytest.fixture(scope="module")
def quick(mnist_dir, tmp_path_factory) -> Path:
    """The quick preset, as a first-time user runs it, on a subset: 2 epochs, cosine schedule, no
    training accuracy measured, readout ``last`` (so no accuracy as the seed measured)."""
    out = tmp_path_factory.mktemp("first-hour") / "quick"
    result = call_main("train", "--preset", "quick", "--subset", "2000", "--epochs", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "--eval-images N makes a quick look quicker" in result.stdout  # a subset alone still reads 20,000
    return out


@pytest.fixture(scope="module")
def mnist_png(mnist, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "seven.png"
    Image.fromarray(mnist.test_x[0].numpy()).save(path)
    return path


# --- 1. the accuracy-over-epochs figure ---------------------------------------------------------------


def drawn(fig) -> dict[str, list]:
    """Per panel (by its y label): the legend's entries and the number of finite points drawn."""
    panels = {}
    for ax in fig.axes:
        points = sum(int(np.isfinite(np.asarray(line.get_ydata(), float)).sum()) for line in ax.get_lines())
        legend = ax.get_legend()
        panels[ax.get_ylabel()] = [[t.get_text() for t in legend.get_texts()] if legend else [], points]
    return panels


def test_a_quick_runs_epoch_figure_shows_what_it_measured(quick):
    panels = drawn(plots.epoch_figure(Run(quick).read_metrics()))
    assert set(panels) == {"accuracy [0, 1]", "loss", "learning rate"}  # cosine: the rate changes
    assert all(points > 0 for _, points in panels.values()), panels
    legend = panels["accuracy [0, 1]"][0]
    assert legend[0] == "validation" and legend[1].startswith("best validation ")
    assert len(legend) == 2  # no training accuracy, no seed's measure: not measured, so not listed


def test_a_seed_runs_epoch_figure_has_both_measures_and_no_rate_panel(mnist_dir, tmp_path):
    result = call_main("train", "--subset", "500", "--epochs", "2", "--out", tmp_path / "seed")
    assert result.returncode == 0, result.stderr
    fig = plots.epoch_figure(Run(tmp_path / "seed").read_metrics())
    panels = drawn(fig)
    assert set(panels) == {"accuracy [0, 1]", "loss"}  # a constant rate is said in the loss panel's title
    assert "learning rate 0.01 throughout" in fig.axes[1].get_title()
    assert {"validation, every row read", "training, as the seed measured"} <= set(panels["accuracy [0, 1]"][0])


def test_plot_says_a_run_without_history_has_none(quick, tmp_path):
    imported = tmp_path / "imported"  # what import-theano leaves: a model, a summary, no metrics.csv
    shutil.copytree(quick, imported, ignore=shutil.ignore_patterns("metrics.csv", "figures"))
    result = call_main("plot", imported)
    assert result.returncode == 0, result.stderr
    names = [Path(p).name for p in result.stdout.split()]
    assert names == ["recurrence.png", "weights.png", "confusion.png", "row_by_row.png"]
    assert result.stderr == (
        f"seqmnist: note: {imported} has no training history (no metrics.csv: an imported model?), "
        "so no epoch_curves.png\n"
    )


# --- 4. messages that mislead --------------------------------------------------------------------------


def test_a_missing_path_and_a_folder_that_is_no_run(tmp_path):
    assert_one_line_error(call_main("evaluate", tmp_path / "nope"), f"{tmp_path / 'nope'}: no such run directory")
    assert_one_line_error(call_main("evaluate", tmp_path), f"{tmp_path}: not a run directory (no config.json")
    assert_one_line_error(call_main("train", "--resume", tmp_path / "nope"), "no such run directory")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(call_main("plot", tmp_path / "file"), "a file, not a run directory")


def test_predict_with_the_run_forgotten(mnist_png, quick):
    for args in ([mnist_png], [mnist_png, mnist_png], ["d8.png"]):
        result = call_main("predict", *args)
        assert_one_line_error(result, f"{args[0]}: the first argument is a run directory, then the images")
    assert_one_line_error(call_main("predict", quick), "no IMAGE after the run directory")


def test_a_near_miss_flag_is_named():
    result = call_main("train", "--epoch", "1")
    assert_one_line_error(result, "unrecognized arguments: --epoch 1; did you mean --epochs?")
    result = call_main("predict", "run", "x.png", "--jsn")
    assert_one_line_error(result, "did you mean --json?")
    assert_one_line_error(call_main("train", "--zzz"), "unrecognized arguments: --zzz (see --help)")


def test_no_command_prints_the_help():
    result = call_main()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: seqmnist") and "predict" in result.stdout
    process = run_cli()  # `python -m seqmnist` itself, through __main__.py
    assert process.returncode == 0 and process.stdout == result.stdout


def test_one_unreadable_image_among_several(quick, mnist_png, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    result = call_main("predict", quick, mnist_png, tmp_path / "notes.txt", mnist_png, "--json")
    assert result.returncode == 2
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(mnist_png)] * 2
    assert_one_line_error(result, f"{tmp_path / 'notes.txt'}: not a PNG, JPEG, GIF, BMP or WebP image")


# --- 5. own images and figures ----------------------------------------------------------------------------


def test_running_prediction_starts_at_the_first_inked_row(quick, mnist_png):
    result = call_main("predict", quick, mnist_png, "--json")
    answer = json.loads(result.stdout)
    first_inked = int(np.nonzero(np.array(answer["input"]).any(axis=1))[0][0]) + 1
    assert answer["first_inked_step"] == first_inked > 1
    text = call_main("predict", quick, mnist_png).stdout
    assert f"running prediction: rows 1-{first_inked - 1} blank, then " in text
    assert f"(row {first_inked}" in text or f"(rows {first_inked}-" in text


def test_figures_of_the_model_reading_a_photo(quick, tmp_path):
    result = call_main("predict", quick, PHOTO, "--plot", tmp_path / "figs")
    assert result.returncode == 0, result.stderr
    assert f"figure: {tmp_path / 'figs' / '3-hard-pencil.png'}" in result.stdout
    result = call_main("plot", quick, "--image", PHOTO)
    assert result.returncode == 0, result.stderr
    path = quick / "figures" / "reading-3-hard-pencil.png"
    assert result.stdout == f"{path}\n"
    assert Image.open(path).size[0] > 1000  # three panels


def test_webp_is_read(quick, mnist_png, tmp_path):
    webp = tmp_path / "seven.webp"
    Image.open(mnist_png).save(webp, lossless=True)
    answers = [json.loads(call_main("predict", quick, path, "--json").stdout) for path in (mnist_png, webp)]
    assert answers[0]["input"] == answers[1]["input"] and answers[0]["label"] == answers[1]["label"]


def test_predict_takes_best(quick, mnist_png):
    answer = json.loads(call_main("predict", quick, mnist_png, "--json", "--best").stdout)
    best = load_run(quick, best=True).read(torch_image(mnist_png))
    assert answer["probabilities"] == [round(float(p), 6) for p in best["probabilities"][0]]


def test_serve_takes_best(quick, tmp_path):
    """--best reaches the run's loading: a run without best-validation weights is refused before listening."""
    without = tmp_path / "without-best"
    shutil.copytree(quick, without, ignore=shutil.ignore_patterns("best.safetensors"))
    assert_one_line_error(call_main("serve", without, "--best"), "no best-validation weights in this run")


def torch_image(path: Path):
    import torch

    return torch.from_numpy(np.array(Image.open(path)))[None]


def test_evaluate_json_rounds_accuracy_to_the_test_sets_resolution(quick):
    result = json.loads(call_main("evaluate", quick, "--json").stdout)
    correct = sum(result["confusion_matrix"][d][d] for d in range(10))
    assert result["test_acc"] == correct / 10000 and len(str(result["test_acc"])) <= 6


# --- 8. extending a finished run ---------------------------------------------------------------------------


def test_a_warm_up_takes_at_most_a_quarter_of_the_run():
    """rows-lstm warms up for one epoch of its 20; a one-epoch look at it warms up for a quarter epoch and
    then follows its cosine, rather than ending at the top of its warm-up."""
    recipe = Config.from_settings("rows-lstm", subset=2000, epochs=1, batch_size=100).recipe
    rates = [learning_rate(recipe, step) for step in range(recipe.batches)]
    assert rates[4] == pytest.approx(recipe.lr) and rates.index(max(rates)) == 4  # 20 steps: 5 warm up
    assert rates[-1] < 0.02 * recipe.lr  # the last step: near the end of its cosine
    full = Config.from_settings("rows-lstm").recipe
    assert learning_rate(full, full.batches - 1) == pytest.approx(full.lr)  # 20 epochs: the whole first warms up


def test_extending_a_cosine_run_stretches_its_schedule(mnist_dir, tmp_path):
    """A finished 1-epoch cosine run extended to 3 epochs: its first epoch keeps the rates it had (down
    to near 0), the new ones follow the 3-epoch cosine, so the rate rises again (no second warm-up)."""
    out = tmp_path / "run"
    data = ("--data-dir", mnist_dir)
    first = call_main("train", "--preset", "quick", "--subset", "500", "--epochs", "1", "--out", out, *data)
    assert first.returncode == 0
    assert call_main("train", "--resume", out, "--epochs", "3", *data).returncode == 0
    rates = [row["lr"] for row in Run(out).read_metrics()]
    steps = 5  # 500 images, 100 a batch; the rate recorded is that of each epoch's last step
    recipe = RecipeSettings(lr=0.003, schedule="cosine", subset=500, epochs=1)
    one_epoch = learning_rate(recipe, steps - 1)
    recipe.epochs = 3
    three_epochs = [learning_rate(recipe, e * steps - 1) for e in (2, 3)]
    assert rates == pytest.approx([one_epoch, *three_epochs])
    assert rates[1] > 3 * rates[0]
    assert "a cosine is stretched to end at epoch N" in " ".join(call_main("train", "--help").stdout.split())
