"""The command line as a user meets it: real processes, real files."""

import json

import pytest

from conftest import assert_one_line_error, call_main, run_cli


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--epochs", "0"], ["--epochs must be an integer >= 1 (got 0)"]),
        (["train", "--lr", "nan"], ["--lr must be a finite number > 0"]),
        (["train", "--rows", "40"], ["--rows must be an integer in 1..28 (got 40)"]),
        (["train", "--preset", "bogus"], ["argument --preset: invalid choice: 'bogus'"]),
        (["train", "--epochs", "many"], ["argument --epochs", "invalid int value"]),
        (["train", "--no-such-flag"], ["unrecognized arguments"]),
        (["frobnicate"], ["invalid choice"]),
        (["train", "--data-dir", "/no/such/dir", "--epochs", "1"], ["/no/such/dir: not a directory"]),
        (["evaluate", "/no/such/run"], ["/no/such/run: no such run directory"]),
        (["train", "--cell", "transformer"], ["--cell must be one of vanilla,", "(got 'transformer'"]),
        (["train", "--task", "pixel", "--pixels-per-step", "5"], ["--pixels-per-step must divide 784 (got 5"]),
        (["train", "--task", "pixel", "--rows", "14"], ["--rows is for the rows task; the pixel task reads all"]),
        (["train", "--pixels-per-step", "16"], ["--pixels-per-step is for the pixel and permuted tasks"]),
        (["train", "--cell", "indrnn", "--init", "orthogonal"], ["--init orthogonal is not for the indrnn cell"]),
        (["train", "--cell", "gru", "--init", "identity"], ["--init identity is not for the gru cell"]),
        (["train", "--task", "permuted", "--permutation", "shuffled"], ["--permutation must be random:SEED or"]),
        (["train", "--task", "pixel", "--permutation", "bitrev"], ["--permutation is for the permuted task"]),
        (["train", "--readout", "max"], ["argument --readout: invalid choice: 'max'"]),
        (["train", "--optimizer", "lbfgs"], ["argument --optimizer: invalid choice: 'lbfgs'"]),
        (["train", "--momentum", "1.5"], ["--momentum must be a number in [0, 1)"]),
        (["train", "--clip", "-1"], ["--clip must be a finite number >= 0"]),
        (["train", "--layers", "0"], ["--layers must be an integer in 1..16"]),
        (["train", "--schedule", "step", "--decay", "0"], ["--decay must be a number in (0, 1]"]),
        (["train", "--subset", "999999"], ["--subset must be an integer in 1..50000"]),
        (["train", "--resume", "x", "--cell", "gru"], ["--resume uses the settings saved in the run; drop --cell"]),
    ],
)
def test_errors_are_one_line_with_exit_2(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = call_main(*args)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.parametrize("args", [["train", "--no-such-flag"], ["train", "--rows", "40"], ["evaluate", "/no/run"]])
def test_errors_are_one_line_from_a_real_process(args, tmp_path):
    assert_one_line_error(run_cli(*args, cwd=tmp_path))
    assert not (tmp_path / "runs").exists()


def test_bad_data_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path))
    result = call_main("train", "--epochs", "1", "--out", tmp_path / "run")
    assert_one_line_error(result, "train-images-idx3-ubyte.gz: not a gzip file")


@pytest.mark.slow
def test_train_then_evaluate(mnist_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    env = {"SEQMNIST_DATA": str(mnist_dir)}
    result = run_cli("train", "--preset", "quick", "--epochs", "1", "--subset", "3000", "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    assert "epoch   1/1" in result.stdout and "test accuracy" in result.stdout
    summary = json.loads((out / "summary.json").read_text())

    monkeypatch.setenv("SEQMNIST_DATA", str(mnist_dir))  # what needs no new process: through cli.main here
    result = call_main("evaluate", out, "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["test_acc"] == round(summary["test_acc"], 4)  # evaluate --json: to 1/10,000
    assert evaluated["test_acc_as_seed"] is summary["test_acc_as_seed"] is None  # the seed's measure: its readout only
    assert evaluated["confusion_matrix"] == summary["confusion_matrix"]

    result = call_main("evaluate", out)
    assert f"test accuracy {summary['test_acc']:.4f}" in result.stdout

    again = call_main("train", "--out", out, "--epochs", "1")
    assert_one_line_error(again, "is a finished run (1 epochs, test accuracy", "--resume", "--epochs N (N > 1)")
    resumed = call_main("train", "--resume", out, "--lr", "0.5")
    assert_one_line_error(resumed, "--resume uses the settings saved in the run; drop --lr")
    finished = call_main("train", "--resume", out)
    assert_one_line_error(finished, "is a finished run", "to train it further: seqmnist train --resume")
    assert json.loads((out / "summary.json").read_text()) == summary  # untouched

    # A finished run trains on to more epochs, recorded in its config.
    extended = run_cli("train", "--resume", out, "--epochs", "2", env=env)
    assert extended.returncode == 0, extended.stderr
    assert "epoch   2/2" in extended.stdout and "epoch   1/" not in extended.stdout
    assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == 2
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert_one_line_error(call_main("train", "--resume", out, "--epochs", "1"), "already trained 2 epochs")


@pytest.mark.slow
def test_evaluate_rejects_a_model_of_the_wrong_shape(mnist_dir, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"hidden": 200, "rows": 28}))
    save_file(
        {
            "U": np.zeros((28, 100), np.float32),
            "W": np.zeros((100, 100), np.float32),
            "V": np.zeros((100, 10), np.float32),
        },
        str(run / "model.safetensors"),
    )
    result = run_cli("evaluate", run, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert_one_line_error(result, "model.safetensors: tensor U has shape (28, 100), expected (28, 200)")
    (run / "model.safetensors").write_bytes(b"\x00" * 100)
    result = run_cli("evaluate", run, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert_one_line_error(result, "model.safetensors: not a readable safetensors file")
