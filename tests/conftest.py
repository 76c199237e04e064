import collections
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


SHARED = ROOT.parent / "shared"  # the team's copies, beside the checkout; a fresh clone has none
SEED_TEST_ROWS = (6, 14, 28)  # the seed's models the tests read


def first_holding(candidates: list, names: list[str]) -> Path | None:
    """The first directory among ``candidates`` (None and "" stand for unset) that holds every file named."""
    for candidate in filter(None, candidates):
        if all((Path(candidate) / name).is_file() for name in names):
            return Path(candidate)
    return None


def pytest_terminal_summary(terminalreporter) -> None:
    """One line per reason tests were skipped, with how many, just above pytest's summary line: a
    fresh clone's run says at a glance what it lacks and how to provide it (-rs lists every test)."""
    reasons = collections.Counter(
        report.longrepr[2].removeprefix("Skipped: ")
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple)
    )
    if reasons:
        terminalreporter.section("skipped, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count} skipped: {reason}")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST the tests run on: $SEQMNIST_DATA, else ../shared/data/mnist, else the download cache.
    Where none holds it the tests that need it are skipped, saying how to provide it, so that a fresh
    clone with no network still passes everything else."""
    from seqmnist.data import ENV_VAR, RESOURCES, cache_dir

    names = [f"{r.name}.gz" for r in RESOURCES.values()]
    found = first_holding([os.environ.get(ENV_VAR), SHARED / "data" / "mnist", cache_dir()], names)
    if found is None:
        pytest.skip(
            f"no real MNIST: set {ENV_VAR} to a directory of its four .gz files, or fill {cache_dir()} "
            "(with network: python -c 'from seqmnist import MNIST; MNIST.load()')"
        )
    return found


@pytest.fixture(scope="session")
def seed_models_dir() -> Path:
    """The seed's trained models (K = 6, 14, 28 at least): $SEQMNIST_SEED_MODELS, else ../shared/seed/models,
    else the download cache; skipped like :func:`mnist_dir` where none holds them."""
    from seqmnist.files import user_cache
    from seqmnist.seed import SEED_MODELS_CACHE, SEED_MODELS_ENV, seed_model_name

    names = [seed_model_name(k) for k in SEED_TEST_ROWS]
    cache = user_cache(SEED_MODELS_CACHE)
    found = first_holding([os.environ.get(SEED_MODELS_ENV), SHARED / "seed" / "models", cache], names)
    if found is None:
        pytest.skip(
            f"no seed models {', '.join(names)}: set {SEED_MODELS_ENV} to a directory holding them, or fill "
            f"{cache} (with network: for K in 6 14 28; "
            "do seqmnist import-theano --rows $K --out /tmp/seed$K; done)"
        )
    return found


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
