"""The README's first-run block, command by command, as a new user types it (real processes)."""

import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT, cli_command

pytestmark = pytest.mark.slow


def first_run_commands() -> list[list[str]]:
    """The `seqmnist ...` lines of the README's first-run block, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- first-run:.*?-->\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README's first-run block is gone"
    lines = [line.split("#")[0].strip() for line in block[1].splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("seqmnist ")]


def test_the_readme_first_run_block_works_as_written(mnist_dir, tmp_path):
    commands = first_run_commands()
    assert [c[0] for c in commands] == ["train", "evaluate", "plot", "predict", "serve"]
    os.symlink(ROOT / "docs", tmp_path / "docs")  # the block's image, at the path it names
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir)}
    outputs = {}
    for args in commands[:-1]:
        result = subprocess.run(cli_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (args, result.stderr)
        outputs[args[0]] = result.stdout
    assert re.search(r"test accuracy 0\.9\d", outputs["evaluate"])
    assert len(list((tmp_path / "runs/first/figures").glob("*.png"))) == 5  # "five PNGs", the block says
    assert outputs["predict"].startswith("docs/predict/digits/7-written-1.jpg: 7 ")
    serve = subprocess.Popen(cli_command(*commands[-1], "--port", "0"), cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = serve.stdout.readline()
        assert re.search(r"http://127\.0\.0\.1:\d+/", line), (line, serve.poll())
    finally:
        serve.terminate()
        serve.wait(10)
