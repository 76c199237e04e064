"""Interrupted, killed, resumed and diverging runs, as real processes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, call_main, run_cli

# make test's tier: real processes signalled and killed mid-training
pytestmark = pytest.mark.slow

# Epoch 1 is not evaluated (NaN accuracies), so resuming is also checked across a skipped evaluation.
SETTINGS = ["--epochs", "3", "--subset", "10000", "--lr", "0.1", "--eval-every", "2"]


def metrics(run: Path) -> list[dict]:
    """metrics.csv without the wall-clock column, which no two runs share."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def start(out: Path, mnist_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seqmnist.cli", "train", *extra, "--out", str(out)]
        if "--resume" not in extra
        else [sys.executable, "-m", "seqmnist.cli", "train", *extra],
        env={**os.environ, "SEQMNIST_DATA": str(mnist_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def summary(run: Path) -> dict:
    """summary.json without what differs between sessions (their conditions, the minutes they took)."""
    return {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k not in ("sessions", "minutes")}


def wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory) -> Path:
    """The same settings, never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    process = start(out, mnist_dir, *SETTINGS)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return out


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference, mnist_dir, tmp_path):
    out = tmp_path / "run"
    process = start(out, mnist_dir, *SETTINGS)
    wait_for(lambda: (out / "metrics.csv").exists())  # epoch 1 done
    time.sleep(0.7)  # well inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert [row["epoch"] for row in metrics(out)] in (["1"], ["1", "2"])
    assert not list(out.glob(".*.tmp")), "a temporary file outlived the kill"

    resumed = start(out, mnist_dir, "--resume", str(out))
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "resuming" in stdout
    assert metrics(out) == metrics(reference)
    assert summary(out) == summary(reference)
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_resume_equals_uninterrupted(sig, reference, mnist_dir, tmp_path):
    out = tmp_path / "run"
    process = start(out, mnist_dir, *SETTINGS)
    wait_for(lambda: (out / "metrics.csv").exists())
    time.sleep(0.5)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint saved" in lines[0] and "--resume" in lines[0], stderr
    assert not (out / "model.safetensors").exists()

    result = run_cli("train", "--resume", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    assert metrics(out) == metrics(reference)
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(mnist_dir, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--epochs", "3", "--subset", "2000", "--lr", "1e9", "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert_one_line_error(result, "training diverged in epoch 1", "nothing was kept", "try a smaller --lr")
    assert not (out / "model.safetensors").exists()
    # Nothing blocks a retry with the same --out.
    again = run_cli(
        "train", "--epochs", "1", "--subset", "2000", "--lr", "0.1", "--out", out, env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert again.returncode == 0, again.stderr


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(mnist_dir, tmp_path):
    out = tmp_path / "run"
    env = {"SEQMNIST_DATA": str(mnist_dir)}
    assert run_cli("train", "--epochs", "1", "--subset", "1000", "--lr", "0.1", "--out", out, env=env).returncode == 0
    config = json.loads((out / "config.json").read_text())
    config["recipe"] |= {"epochs": 2, "lr": 1e9}  # blow up in epoch 2
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").unlink()
    good = (out / "checkpoint.safetensors").read_bytes()
    result = run_cli("train", "--resume", out, env=env)
    assert_one_line_error(result, "training diverged in epoch 2", "checkpoint.safetensors keeps the last good state")
    assert (out / "checkpoint.safetensors").read_bytes() == good
    assert [row["epoch"] for row in metrics(out)] == ["1"]


def test_resume_of_a_run_that_never_existed(tmp_path):
    result = call_main("train", "--resume", tmp_path / "nothing")
    assert_one_line_error(result, "no such run directory")


def test_corrupt_checkpoint_is_rejected_cleanly(reference, mnist_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text((reference / "config.json").read_text())
    (out / "checkpoint.safetensors").write_bytes((reference / "checkpoint.safetensors").read_bytes()[:-100])
    result = run_cli("train", "--resume", out, env={"SEQMNIST_DATA": str(mnist_dir)})
    assert_one_line_error(result, "checkpoint.safetensors: not a readable safetensors file")
