"""What each preset measured is stated once, in the package's reference/measured.csv (written from the
evidence in docs/results/ by scripts/results_table.py); `seqmnist presets` and the README show it."""

import re
from pathlib import Path

from conftest import call_main
from seqmnist.config import FIRST_LOOKS, PRESETS, Config, measured_presets, preset_for

README = Path(__file__).resolve().parents[1] / "README.md"


def shown(row: dict) -> str:
    return f"{row['test_acc']}{' ± ' + row['sd'] if row['sd'] else ''}%"


def test_every_measured_row_is_a_preset_of_today():
    measured = measured_presets()
    assert set(measured) <= set(PRESETS)
    for row in measured.values():
        assert 0 < float(row["test_acc"]) <= 100 and float(row["minutes"]) > 0 and int(row["runs"]) >= 1
        assert row["measured_on"].strip()


def test_the_presets_command_shows_each_preset_with_what_it_measured():
    printed = call_main("presets")
    assert printed.returncode == 0, printed.stderr
    lines = {line.split("|")[1].strip(): line for line in printed.stdout.splitlines() if line.startswith("| ")}
    measured = measured_presets()
    for name in PRESETS:
        row = measured.get(name)
        assert (shown(row) in lines[name] and row["minutes"] in lines[name]) if row else "not measured" in lines[name]
    for machine in {row["measured_on"] for row in measured.values()}:
        assert f"Measured on {machine}:" in printed.stdout


def test_the_readmes_preset_table_is_what_was_measured():
    row = r"^\| `([a-z0-9-]+)`(?: \(default\))? \| [^|]+ \| ([^|]+) \| ([^|]+) \|$"
    table = re.findall(row, README.read_text(), re.M)
    assert [name for name, _, _ in table] == list(PRESETS)
    measured = measured_presets()
    for name, accuracy, minutes in table:
        row = measured.get(name)
        assert row is not None, f"{name}: no measurement in reference/measured.csv"
        assert accuracy.strip().startswith(shown(row)) and minutes.strip() == row["minutes"], name


def test_a_cell_or_task_without_a_preset_takes_the_one_made_for_it():
    assert preset_for(None, None)[0] == "seed"  # no flags: the 2016 replay
    assert preset_for("vanilla", "rows")[0] == "rows-vanilla"  # not the replay nor the first look
    assert preset_for("s4d", "permuted")[0] == "permuted-s4d" and preset_for("lstm", None)[0] == "rows-lstm"
    assert preset_for("gru", "pixel")[0] == "pixel-lru"  # no preset for it: the task's recipe
    assert preset_for("relu", "rows") == ("rows-lstm", "rows-lstm's recipe, the rows task's for any cell "
                                          "(docs/protocol.md), with relu")  # fmt: skip


def test_the_first_line_says_whose_settings_a_run_took(mnist_dir, tmp_path):
    trained = call_main("train", "--cell", "gru", "--hidden", "16", "--epochs", "1", "--subset", "300",
                        "--eval-images", "100", "--out", tmp_path / "run", "--data-dir", mnist_dir)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("settings: rows-gru's, the preset for gru on the rows task")
    look = "a look at 300 images: batches of 10, 30 steps an epoch (--batch-size sets it)"
    assert trained.stdout.splitlines()[1] == look


def test_a_look_at_a_subset_takes_batches_small_enough_for_a_hundred_steps():
    assert Config.from_settings("rows-lstm", subset=2000).recipe.batch_size == 20
    assert Config.from_settings("rows-lstm", subset=2000, batch_size=50).recipe.batch_size == 50  # asked for
    assert Config.from_settings("rows-lstm", subset=20000).recipe.batch_size == 100  # 200 steps already
    assert Config.from_settings("pixel-indrnn", subset=2000).recipe.batch_size == 20
    assert Config.from_settings("rows-lstm").recipe.batch_size == 100
    for first_look in FIRST_LOOKS:  # the seed's replay reads a subset as its code did
        assert Config.from_settings(first_look, subset=2000).recipe.batch_size == 100
