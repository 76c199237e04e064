"""Settings declared once: the flags, the help's defaults, the checks and both forms of config.json
come from the declarations in seqmnist.config."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, call_main
from seqmnist.cli import BENCH_SHAPE, build_parser
from seqmnist.config import GROUPS, NAMES, PRESETS, RENAMED, SETTINGS, Config, current_names
from seqmnist.errors import SeqmnistError
from seqmnist.runner import trial_name
from seqmnist.runs import load_run
from seqmnist.sweep import load_grid

DOCS = Path(__file__).resolve().parent.parent / "docs"


def command_flags(command: str) -> dict:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return {flag: a for a in subparsers.choices[command]._actions for flag in a.option_strings}


def test_every_setting_has_its_flag_with_the_seeds_default_in_the_help():
    flags = command_flags("train")
    help_text = " ".join(call_main("train", "--help").stdout.split())
    seed = Config()
    for name, setting in SETTINGS.items():
        action = flags[setting.flag]
        assert action.dest == name and action.default is None  # unset: the preset's value
        shown = f"(default: {setting.shown_default})"
        assert shown in " ".join(action.help.split()) and shown in help_text, name
        default = getattr(getattr(seed, setting.group), name)
        if isinstance(default, bool):
            assert setting.shown_default == ("yes" if default else "no")
        elif setting.shown is None:  # the default's own value
            assert type(default)(setting.shown_default) == default, name
        if setting.valid.choices is not None and setting.valid.closed:
            assert list(action.choices) == list(setting.valid.choices)  # a renamed one's old values parse too
            assert all(old in action.choices for old in (RENAMED[name].values.values() if name in RENAMED else []))
        elif setting.valid.choices is not None:  # listed in the help, more taken (--cell module.path:ClassName)
            assert action.choices is None and action.metavar == "{" + ",".join(setting.valid.choices) + "}"
    assert "(default: 200)" in help_text and "(default: 12345)" in help_text and "(default: 0.01)" in help_text


def test_bench_takes_the_shape_settings_as_train_does():
    train, bench = command_flags("train"), command_flags("bench")
    for name in BENCH_SHAPE:
        flag = SETTINGS[name].flag
        assert bench[flag].type == train[flag].type and bench[flag].choices == train[flag].choices


def test_flat_names_are_unique_across_the_groups_and_route_to_their_group():
    declared = [f.name for kind in GROUPS.values() for f in fields(kind)]
    assert len(declared) == len(set(declared)) == len(SETTINGS) == len(NAMES) - 1
    config = Config.from_settings("quick", lr=0.02, cell="gru", device="cpu", rows=7)
    assert (config.recipe.lr, config.model.cell, config.run.device, config.task.rows) == (0.02, "gru", "cpu", 7)
    assert config.recipe.optimizer == "adam" and config.model.hidden == 128  # the preset's
    assert config.replace(epochs=5).recipe.epochs == 5 and config.recipe.epochs == 2


def test_presets_are_partial_settings_by_flat_name():
    for name, preset in PRESETS.items():
        assert set(preset.settings) <= set(SETTINGS), name
        Config.from_settings(name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"layers": 17}, "--layers must be an integer in 1..16 (got 17)"),
        ({"weight_decay": 1.5}, "--weight-decay must be a number in [0, 1) (got 1.5)"),
        ({"seed": -1}, "--seed must be an integer in 0..2^32-1 (got -1)"),
        ({"warmup": -1.0}, "--warmup must be a number of epochs >= 0 (got -1.0)"),
        ({"bias": "yes"}, "--bias must be true or false (got 'yes')"),
        ({"optimizer": "lion"}, "--optimizer must be one of sgd, momentum, nesterov, adam, adamw, rmsprop"),
        ({"input_scale": 100}, "--input-scale must be 255 or 256 (got 100)"),
        ({"momentum": "0.9"}, "--momentum must be a number in [0, 1) (got '0.9')"),
    ],
)
def test_a_bad_value_names_its_flag_and_range(settings, message):
    with pytest.raises(SeqmnistError) as raised:
        Config.from_settings("seed", **settings)
    assert str(raised.value).startswith(message)


def test_a_bad_value_on_the_command_line_is_one_line():
    assert_one_line_error(call_main("train", "--hidden", "0"), "--hidden must be an integer in 1..65536 (got 0)")
    assert_one_line_error(call_main("train", "--patience", "-1"), "--patience must be an integer >= 0 (got -1)")


def test_config_json_is_written_nested_and_read_back(tmp_path):
    config = Config.from_settings("pixel16-lstm", seed=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    saved = json.loads(path.read_text())
    assert set(saved) == {"preset", *GROUPS} and saved["recipe"]["seed"] == 3 and saved["task"]["task"] == "pixel"
    assert Config.from_file(path) == config


def test_the_flat_config_json_of_runs_before_the_groups_loads_as_it_was():
    runs = sorted(DOCS.glob("results/*/runs/*/config.json")) + sorted(DOCS.glob("reproduction/runs/*/config.json"))
    flat_runs = [path for path in runs if "recipe" not in json.loads(path.read_text())]  # not today's nested form
    assert len(flat_runs) > 20
    for path in flat_runs:
        flat = current_names(json.loads(path.read_text()))  # as it was, in today's names (RENAMED)
        loaded = Config.from_file(path).to_flat()
        assert {k: loaded[k] for k in flat} == flat, path
        assert all(loaded[k] == SETTINGS[k].default for k in set(loaded) - set(flat)), path  # added since: defaults
    for path in DOCS.glob("results/*/runs/*/config.json"):  # a sweep finds its finished trials by name
        assert trial_name(Config.from_file(path).to_flat()) == path.parent.name


def test_renamed_settings_read_in_their_old_names_and_keep_the_names_runs_hash(mnist_dir, tmp_path):
    """--engine fast|autograd is --compute fast|definition and --rng seed is --rng numpy: an old
    config.json, grid file or flag still works (a flag says its new name once), the files written say the
    new names, and a run's name hashes the old spelling, so every finished trial is found (above)."""
    old = {"preset": "seed", "engine": "autograd", "rng": "seed", "epochs": 1}
    config = Config.from_flat(old)
    assert (config.run.compute, config.recipe.rng) == ("definition", "numpy")
    assert {"engine": "autograd", "rng": "seed"}.items() <= config.identity().items()
    assert trial_name(old) == trial_name({"preset": "seed", "compute": "definition", "rng": "numpy", "epochs": 1})
    (tmp_path / "old.toml").write_text('[settings]\nengine = "autograd"\n[grid]\nrng = ["seed", "torch"]\n')
    trials = load_grid(tmp_path / "old.toml")
    assert [(t.config().run.compute, t.config().recipe.rng) for t in trials] == [("definition", "numpy"),
                                                                                 ("definition", "torch")]  # fmt: skip
    trained = call_main("train", "--engine", "autograd", "--rng", "seed", "--rows", "4", "--epochs", "1",
                        "--subset", "200", "--eval-images", "100", "--no-eval-train", "--out", tmp_path / "run",
                        "--data-dir", mnist_dir)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr.splitlines() == [
        "seqmnist: --compute definition is the new name of --engine autograd",
        "seqmnist: --rng numpy is the new name of --rng seed",
    ]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["run"]["compute"], saved["recipe"]["rng"]) == ("definition", "numpy")
    assert "--engine" not in call_main("train", "--help").stdout


def test_a_run_with_a_flat_config_json_evaluates_and_reads_as_the_nested_one(quick_run, mnist, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(quick_run, flat)
    (flat / "config.json").write_text(json.dumps(Config.from_file(quick_run / "config.json").to_flat()))
    evaluated = [json.loads(call_main("evaluate", run, "--json").stdout) for run in (quick_run, flat)]
    assert evaluated[0] == evaluated[1]
    images = mnist.test_x[:8]
    read = [load_run(run).read(images)["probabilities"] for run in (quick_run, flat)]
    assert torch.equal(read[0], read[1])


@pytest.mark.parametrize(
    "data",
    [
        [1, 2],
        {"task": {"rows": 28}, "lr": 0.1},  # nested and flat mixed
        {"model": {"lr": 0.1}},  # a setting in another group's table
        {"recipe": {"learning_rate": 0.1}},
        {"learning_rate": 0.1},
    ],
)
def test_a_config_json_of_neither_form_is_refused(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SeqmnistError, match="not a seqmnist run configuration"):
        Config.from_file(path)


def test_a_bad_value_in_a_nested_config_json_names_the_file_and_flag(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"layers": 99}}))
    with pytest.raises(SeqmnistError, match=r"config.json: --layers must be an integer in 1..16 \(got 99\)"):
        Config.from_file(path)
