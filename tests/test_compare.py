"""Runs side by side: ``seqmnist compare`` on real run folders (the docs' sweeps and reproduction, a
sweep trained here, the session's quick run), and TensorBoard's event files of a sweep read back."""

import csv
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist.config import Config
from seqmnist.files import read_json
from seqmnist.runner import trial_name
from seqmnist.runs import Run
from seqmnist.tensorboard import scalar_tag

DOCS = Path(__file__).resolve().parent.parent / "docs"
RESULTS = ["epochs run", "best epoch", "val acc at best", "test acc at best", "test acc last", "minutes"]

# Two trials of two short epochs, their events under tb/ relative to where the sweep is started.
GRID = """\
[settings]
preset = "quick"
epochs = 2
subset = 1000
tensorboard = "tb"
[grid]
hidden = [16, 32]
"""


def table_rows(stdout: str) -> list[list[str]]:
    """compare's printed table, as cells (header first, the rule left out)."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def events(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()


# --- TensorBoard ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(mnist_dir, tmp_path_factory) -> Path:
    """The grid swept by two pool workers, started in its own folder (so "tb" is relative to it)."""
    root = tmp_path_factory.mktemp("tb-sweep")
    (root / "grid.toml").write_text(GRID)
    result = run_cli(
        "sweep", "grid.toml", "--out", "out", "--jobs", "2", cwd=root, env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
def test_a_sweeps_trials_each_write_events_that_read_back_as_their_metrics(swept):
    runs = sorted((swept / "out" / "runs").iterdir())
    assert [run.name for run in runs] == sorted(trial_name({"preset": "quick", "epochs": 2, "subset": 1000,
                                                            "hidden": h}) for h in (16, 32))  # fmt: skip
    assert sorted(p.name for p in (swept / "tb").iterdir()) == [run.name for run in runs]  # one TensorBoard run each
    for run in runs:
        board = events(swept / "tb" / run.name)
        metrics = Run(run).read_metrics()
        summary = read_json(run / "summary.json")
        print(f"\n{run.name}: {', '.join(board.Tags()['scalars'])}")
        for column in metrics[0]:
            measured = [(int(row["epoch"]), row[column]) for row in metrics if row[column] == row[column]]
            if column == "epoch" or not measured:
                continue
            read = [(event.step, event.value) for event in board.Scalars(scalar_tag(column))]
            print(f"  {scalar_tag(column):22} {read}")
            assert [step for step, _ in read] == [epoch for epoch, _ in measured]
            assert [value for _, value in read] == pytest.approx([value for _, value in measured], rel=1e-6)
        for name in ("U", "W", "b", "V", "c"):  # the vanilla cell's weights, every epoch
            assert [event.step for event in board.Histograms(f"weights/{name}")] == [1, 2]
        start = plugin_data_pb2.HParamsPluginData.FromString(
            board.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["hidden"].number_value == Config.from_file(run / "config.json").model.hidden
        assert start.hparams["cell"].string_value == "vanilla" and "tensorboard" not in start.hparams
        assert board.Scalars("hparams/test_acc")[0].value == pytest.approx(summary["test_acc"], rel=1e-6)
        assert board.Scalars("hparams/best_epoch")[0].value == summary["best"]["epoch"]
    assert "tensorboard" not in (swept / "out" / "results.md").read_text()  # where events go is no result


def test_adding_a_tensorboard_folder_renames_no_trial():
    assert trial_name({"preset": "quick", "tensorboard": "tb"}) == trial_name({"preset": "quick"})


@pytest.mark.slow
def test_a_resumed_run_appends_to_its_event_folder(mnist_dir, tmp_path):
    run, tb = tmp_path / "run", tmp_path / "tb"
    flags = ("--preset", "quick", "--subset", "1000", "--hidden", "16", "--data-dir", mnist_dir)
    assert call_main("train", *flags, "--epochs", "1", "--out", run, "--tensorboard", tb).returncode == 0
    resumed = call_main("train", "--resume", run, "--epochs", "2", "--data-dir", mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    board = events(tb / "run")
    metrics = Run(run).read_metrics()
    read = board.Scalars("accuracy/val_acc")  # both sessions' epochs, once each
    assert [e.step for e in read] == [int(row["epoch"]) for row in metrics] == [1, 2]
    assert [e.value for e in read] == pytest.approx([row["val_acc"] for row in metrics], rel=1e-6)
    assert [e.step for e in board.Scalars("hparams/test_acc")] == [1, 2]  # each finish: the newest counts


def test_tensorboard_without_its_package_is_one_line_naming_the_extra(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without the extra has
    result = call_main("train", "--preset", "quick", "--subset", "1000", "--out", tmp_path / "run",
                       "--tensorboard", tmp_path / "tb", "--data-dir", mnist_dir)  # fmt: skip
    assert_one_line_error(result, "--tensorboard needs the tensorboard package", "seqmnist[tensorboard]")
    assert not (tmp_path / "run").exists()


def test_a_tensorboard_folder_that_cannot_be_made_is_one_line(mnist_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = call_main("train", "--preset", "quick", "--subset", "1000", "--out", tmp_path / "run",
                       "--tensorboard", tmp_path / "a-file", "--data-dir", mnist_dir)  # fmt: skip
    assert_one_line_error(result, "--tensorboard", "a-file", "cannot create")
    assert not (tmp_path / "run").exists()


# --- compare -------------------------------------------------------------------------------------


def test_compare_puts_sweeps_and_a_reproduction_of_old_flat_configs_side_by_side(tmp_path):
    result = call_main("compare", DOCS / "results" / "rows", DOCS / "reproduction", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    header, *rows = table_rows(result.stdout)
    assert len(rows) == 12 + 14 and header[0] == "run"
    assert {"preset", "rows", "cell", "hidden", "optimizer", "lr", "epochs", "seed"} <= set(header)
    assert header[-6:] == [
        "epochs run",
        "best epoch",
        "val acc at best",
        "test acc at best",
        "test acc last",
        "minutes",
    ]
    assert "input_scale" in header and "bias" in header and "tensorboard" not in header
    written = read_csv(tmp_path / "compare.csv")
    summary = read_json(DOCS / "results" / "rows" / "runs" / "irnn-rows-af96ac9b57" / "summary.json")
    irnn = next(row for row in written if row["run"] == "irnn-rows-af96ac9b57")
    assert (int(irnn["best epoch"]), float(irnn["test acc at best"])) == (28, summary["best"]["test_acc"])
    assert float(irnn["test acc last"]) == summary["test_acc"] and irnn["cell"] == "irnn"
    reproduced = next(row for row in written if row["run"] == "rows-02")  # reproduce's run of the first 2 rows
    assert (reproduced["preset"], reproduced["rows"], reproduced["cell"]) == ("seed", "2", "vanilla")
    with Image.open(tmp_path / "compare.png") as figure:
        assert figure.format == "PNG" and figure.width > 800
    assert result.stdout.splitlines()[-2:] == [str(tmp_path / "compare.csv"), str(tmp_path / "compare.png")]


@pytest.mark.slow
def test_compare_shows_the_settings_in_which_a_sweep_and_a_run_differ(swept, quick_run, tmp_path):
    result = call_main("compare", swept / "out", quick_run, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    header, *rows = table_rows(result.stdout)
    assert header[:6] == ["run", "hidden", "lr", "epochs", "subset", "epochs run"]  # nothing else differs
    assert sorted(row[1] for row in rows) == ["128", "16", "32"]
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_a_run_without_metrics_is_left_out_with_a_note(quick_run, tmp_path):
    imported = tmp_path / "imported"
    shutil.copytree(quick_run, imported)
    (imported / "metrics.csv").unlink()
    result = call_main("compare", quick_run, imported, "--out", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"seqmnist: note: left out {imported}: no metrics.csv "
                                          "(no epoch finished yet, or an imported model)"]  # fmt: skip
    header, *rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["run"] and header[1:2] == ["epochs run"]  # one run: nothing differs


def test_an_unfinished_run_shows_its_curve_but_no_test_accuracy(quick_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(quick_run, unfinished)
    (unfinished / "summary.json").unlink()
    result = call_main("compare", quick_run, unfinished, "--out", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    assert "unfinished (1 of 1 epochs): no test accuracy" in result.stderr
    header, *rows = table_rows(result.stdout)
    by_run = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert by_run["unfinished"]["test acc last"] == "-" and by_run["run"]["test acc last"] != "-"
    assert by_run["unfinished"]["best epoch"] == by_run["run"]["best epoch"] == "1"


def bad_input(case: str, tmp: Path, run: Path) -> tuple[list[Path], list[str]]:
    """The folders given for each case of bad input, and what its one line must say."""
    if case == "missing":
        return [run, tmp / "nowhere"], ["nowhere: no such folder"]
    if case == "empty":
        (tmp / "empty").mkdir()
        return [tmp / "empty"], ["empty: no runs in it"]
    if case == "file":
        (tmp / "f").write_text("x")
        return [tmp / "f"], ["f: a file, not a run folder"]
    shutil.copytree(run, tmp / "sweep" / "runs" / "a")  # a sweep whose only run has no metrics
    (tmp / "sweep" / "runs" / "a" / "metrics.csv").unlink()
    return [tmp / "sweep"], ["no run to compare", "a: no metrics.csv"]


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no metrics"])
def test_bad_input_is_one_line(case, quick_run, tmp_path):
    paths, fragments = bad_input(case, tmp_path, quick_run)
    result = call_main("compare", *paths, "--out", tmp_path / "cmp")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "cmp").exists()
