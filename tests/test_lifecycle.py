"""What a new user and a close reading of the code hit: the run's lifecycle and the command line's
edges, each as a real process where one can run."""

import fcntl
import json
import os
import pty
import re
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, call_main, cli_command, run_cli
from seqmnist import engine
from seqmnist.config import Config
from seqmnist.evaluation import step_logits
from seqmnist.files import read_tensors
from seqmnist.interrupt import TrainingInterrupted
from seqmnist.registry import cell_names
from seqmnist.runs import Run, new_run
from seqmnist.train import train

# A modern recipe: Adam's state and a cosine schedule must survive an interruption exactly.
# Batches of 25 make an epoch of 480 steps (~1 s on a fast core), so a signal sent 0.15 s into epoch 2 lands
# between its batches on any machine, not after it.
ADAM = ["--preset", "quick", "--epochs", "3", "--subset", "12000", "--batch-size", "25", "--eval-every", "2"]


def without_session(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("sessions", "minutes")}


def rows_without_seconds(run: Path) -> list[str]:
    return [",".join(line.split(",")[:-1]) for line in (run / "metrics.csv").read_text().splitlines()]


def test_output_directory_problems_are_one_line_before_the_data_loads(tmp_path, monkeypatch):
    # No data anywhere: had the data loaded first, the error would be about the data.
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path / "no-data"))
    (tmp_path / "a-file").write_text("x")
    result = call_main("train", "--out", tmp_path / "a-file")
    assert_one_line_error(result, "a-file: exists and is not a directory")
    result = call_main("train", "--out", "/proc/nope/run")
    assert_one_line_error(result, "/proc/nope/run: cannot create the run directory")
    result = call_main("train", "--out", tmp_path / "new" / "run")
    assert_one_line_error(result, "no-data: not a directory")
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind


@pytest.fixture(scope="module")
def tiny_run(mnist_dir, tmp_path_factory) -> Path:
    """A one-epoch run, trained under umask 022 like most users' shells."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    train = " ".join(cli_command("train", "--preset", "quick", "--epochs", "1", "--subset", "1000", "--out", run))
    result = subprocess.run(
        f"umask 022 && {train}",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SEQMNIST_DATA": str(mnist_dir)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tiny_run, mnist_dir):
    shell = " ".join(cli_command("evaluate", tiny_run, "--json")) + " | head -c 20"
    piped = subprocess.run(
        shell,
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SEQMNIST_DATA": str(mnist_dir)},
        timeout=300,
    )
    assert piped.stdout.startswith('{"test_acc": ') and len(piped.stdout) == 20
    assert piped.stderr == ""  # no BrokenPipeError traceback


def test_interrupted_training_pickles():
    import pickle

    again = pickle.loads(pickle.dumps(TrainingInterrupted(15, "stopped; continue with ...")))
    assert again.signum == 15 and str(again) == "stopped; continue with ..."


@pytest.fixture(scope="module")
def adam_reference(mnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adam") / "run"
    result = run_cli("train", *ADAM, "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_optimizer_state_survives_an_interruption(adam_reference, mnist_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir)}
    process = subprocess.Popen(
        cli_command("train", *ADAM, "--out", out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (out / "metrics.csv").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    into_epoch = time.monotonic()
    time.sleep(0.15)  # inside epoch 2 (480 batches), before its evaluation
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    _, metadata = read_tensors(out / "checkpoint.safetensors")
    before = json.loads(metadata["state"])["loop"]["position"]
    assert before["epoch"] == 2 and before["batch"] > 0 and 0 < before["seconds"] < time.monotonic() - into_epoch
    resumed = run_cli("train", "--resume", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert resumed.returncode == 0, resumed.stderr
    assert rows_without_seconds(out) == rows_without_seconds(adam_reference)
    assert (out / "model.safetensors").read_bytes() == (adam_reference / "model.safetensors").read_bytes()
    assert without_session(out) == without_session(adam_reference)
    # The resumed epoch's seconds count the time before the interruption too.
    seconds = float((out / "metrics.csv").read_text().splitlines()[2].split(",")[-1])
    assert seconds > before["seconds"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["from_epoch"] for s in summary["sessions"]] == [1, 2]
    assert {"threads", "path", "device", "torch", "numpy"} <= set(summary["sessions"][0])


@pytest.mark.slow
def test_files_honour_the_umask(tiny_run):
    for name in ("config.json", "metrics.csv", "checkpoint.safetensors", "model.safetensors", "summary.json"):
        assert stat.S_IMODE((tiny_run / name).stat().st_mode) == 0o644, name


@pytest.mark.slow
def test_summary_confusion_matrix_reads_one_line_per_digit(tiny_run):
    lines = (tiny_run / "summary.json").read_text().splitlines()
    start = lines.index('  "confusion_matrix": [')
    assert all(line.strip().startswith("[") and line.count(",") >= 9 for line in lines[start + 1 : start + 11])


def test_evaluation_leaves_gradients_on_for_the_caller():
    model = Config.from_settings(hidden=8).model_spec()
    from seqmnist.model import build_model

    chunks = step_logits(build_model(model), torch.rand(3, 28, 28))
    next(chunks)
    assert torch.is_grad_enabled()


def test_the_autograd_engine_never_uses_the_fast_one(mnist, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fast engine was used")

    monkeypatch.setattr(engine, "layers_loss", refuse)
    monkeypatch.setattr(engine, "layers_logits", refuse)
    monkeypatch.setattr(engine, "layers_gradients", refuse)  # the seed's plain SGD would take it when fast
    config = Config.from_settings("seed", epochs=1, subset=300, rows=6, compute="definition", eval_every=1)
    summary = train(config, mnist, new_run(tmp_path / "run"), log=lambda line: None)
    assert 0 <= summary["test_acc"] <= 1


@pytest.mark.slow
def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_otherwise(mnist_dir, tmp_path):
    args = cli_command("train", "--preset", "quick", "--epochs", "2", "--subset", "3000", "--out", tmp_path / "a")
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir)}
    piped = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert piped.returncode == 0
    assert "\r" not in piped.stdout + piped.stderr
    start, where, hint, *epochs = piped.stdout.splitlines()
    assert start.startswith("rows: 28 steps") and where.startswith("on cpu") and "--eval-images N" in hint
    assert [line.split()[:2] for line in epochs[:2]] == [["epoch", "1/2"], ["epoch", "2/2"]]

    args[-1] = str(tmp_path / "b")
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    process = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=300)
    text = seen.decode(errors="replace")
    assert "img_s=" in text and "loss=" in text and "acc=" in text  # running loss, sampled accuracy, images/s
    assert "validation set" in text or "test set" in text  # evaluation shows progress too


@pytest.mark.slow
def test_help_version_and_module(tmp_path):
    overview = call_main("--help").stdout
    assert "examples:\n  seqmnist train --preset quick" in overview and "seqmnist predict runs/first" in overview
    help_text = call_main("train", "--help").stdout
    everyday = help_text[help_text.index("everyday flags") : help_text.index("the task (how")]
    assert all(flag in everyday for flag in ("--preset NAME", "--cell", "--task", "--epochs", "--out", "--resume"))
    assert "{" + ",".join(cell_names()) + "}" in help_text and "{rows,pixel,permuted}" in help_text
    assert "RUN_DIR         a run directory (from train" in call_main("evaluate", "--help").stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("seqmnist ")
    module = subprocess.run([sys.executable, "-m", "seqmnist", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout == version.stdout


def test_flags_cannot_be_abbreviated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = call_main("train", "--epoch", "1", "--subse", "2000")
    assert_one_line_error(result, "unrecognized arguments: --epoch 1 --subse 2000")


@pytest.mark.slow
def test_the_quick_preset_shows_a_working_model(mnist_dir, tmp_path):
    """Its accuracy; its time is a benchmark's business (`seqmnist bench`), not a test's."""
    result = run_cli("train", "--preset", "quick", "--out", tmp_path / "run", env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_acc"] >= 0.9


def test_the_python_api(mnist, tmp_path):
    import seqmnist

    config = seqmnist.Config.from_settings("quick", epochs=1, subset=1000)
    train(config, mnist, new_run(tmp_path / "run"), log=lambda line: None)
    trained = seqmnist.load_run(tmp_path / "run")
    out = trained.read(mnist.test_x[:7])
    assert out["labels"].shape == (7,) and out["running"].shape == (28, 7, 10)
    assert torch.equal(out["running"][-1].argmax(1), out["labels"])
    assert isinstance(trained.model, seqmnist.ElementwiseRNN) and isinstance(trained.run, Run)


def test_without_a_terminal_a_long_epoch_prints_plain_progress_lines(mnist, tmp_path, monkeypatch):
    """Logs, CI and workers get a plain line every PLAIN_EVERY seconds (here: every batch)."""
    from seqmnist.train import Progress

    monkeypatch.setattr(Progress, "PLAIN_EVERY", 0.0)
    lines = []
    config = Config.from_settings("quick", epochs=1, subset=300, batch_size=100)
    train(config, mnist, new_run(tmp_path / "run"), log=lines.append)
    progress = [line for line in lines if line.startswith("epoch 1/1: batch")]
    assert len(progress) == 3 and "\r" not in "".join(lines)
    assert re.fullmatch(
        r"epoch 1/1: batch 3/3, loss \d\.\d{4}, accuracy 0\.\d{3} \(sampled\), \d+ images/s, 0\.0 min left",
        progress[-1],
    )


def test_train_without_flags_says_it_is_the_long_replay(mnist_dir, tmp_path, monkeypatch):
    """The line comes before any work: here the data directory is bad, so nothing trains."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path / "nowhere"))
    result = call_main("train")
    assert result.stdout.startswith("no flags: the seed's 100-epoch replay")
    assert "seqmnist train --preset quick" in result.stdout
