import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST copy the tests run on: $SEQMNIST_DATA, else ../shared/data/mnist."""
    path = Path(os.environ.get("SEQMNIST_DATA") or ROOT.parent / "shared" / "data" / "mnist")
    assert (path / "train-images-idx3-ubyte.gz").exists(), f"real MNIST not found at {path}; set SEQMNIST_DATA"
    return path


@pytest.fixture(scope="session")
def seed_models_dir(mnist_dir) -> Path:
    """The seed's trained models (shared/seed/models): beside the checkout, else beside the data."""
    for shared in (ROOT.parent / "shared", mnist_dir.parents[1]):
        if (shared / "seed" / "models" / "SHA256SUMS").exists():
            return shared / "seed" / "models"
    raise AssertionError("the seed's models (shared/seed/models) not found")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from seqmnist.data import MNIST

    return MNIST.load(mnist_dir)


def cli_command(*args: object) -> list[str]:
    """The command line of ``seqmnist ARGS`` as a real process (for Popen and shells)."""
    return [sys.executable, "-m", "seqmnist.cli", *map(str, args)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m seqmnist.cli`` as a real process; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def call_main(*args: object) -> SimpleNamespace:
    """``seqmnist ARGS`` through the real ``cli.main`` in this process, for the many cases where a
    new process (two seconds of imports each) would test nothing more; stdout and stderr captured."""
    from seqmnist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2, a single line on stderr naming what is wrong, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def quick_run(mnist_dir, tmp_path_factory) -> Path:
    """One small trained rows run for every test that only reads a model (predict, serve, devices): the
    quick preset, one epoch on 10,000 images, trained once per session by the real CLI in this process.
    Tests that change a run work on a copy."""
    out = tmp_path_factory.mktemp("quick") / "run"
    result = call_main("train", "--preset", "quick", "--epochs", "1", "--subset", "10000", "--lr", "0.01",
                       "--out", out, "--data-dir", mnist_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out
