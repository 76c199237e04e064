"""Grids of trainings: expansion, the results table, re-runs, interruptions and bad grid files on the
local pool; the same grid, a killed worker and a Tune search on a real Ray cluster of local processes."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, call_main, cli_command, run_cli
from seqmnist.errors import SeqmnistError
from seqmnist.sweep import load_grid

ROOT = Path(__file__).resolve().parents[1]

# make test's tier: local process pools and a real Ray cluster
pytestmark = pytest.mark.slow

# The example, as written.
GRID = """\
[settings]      # the same for every trial
preset = "quick"
epochs = 1
subset = 2000
[grid]          # every combination of these
hidden = [32, 64]
seed = [1, 2]
"""


def results(out) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(mnist_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.toml").write_text(GRID)
    result = run_cli(
        "sweep", root / "grid.toml", "--out", root / "out", "--jobs", "2", env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert result.returncode == 0, result.stderr
    return root, result


def test_the_example_grid_makes_four_trials_and_its_tables(swept):
    root, result = swept
    rows = results(root / "out")
    assert len(rows) == 4
    assert {(r["hidden"], r["seed"]) for r in rows} == {("32", "1"), ("32", "2"), ("64", "1"), ("64", "2")}
    for row in rows:
        assert set(row) >= {"test_acc", "val_acc", "epochs", "minutes", "run_dir"}
        assert 0.1 < float(row["test_acc"]) < 1 and row["epochs"] == "1"
        assert os.path.exists(os.path.join(row["run_dir"], "summary.json"))
        assert os.path.basename(row["run_dir"]).startswith("vanilla-rows-")  # named by a hash of its settings
    table = (root / "out" / "results.md").read_text().splitlines()
    assert table[0].startswith("| hidden |") and "| n |" in table[0]
    assert len(table) == 4 and all("| 2 |" in line for line in table[2:])  # two settings, two seeds each
    assert "results.md" in result.stdout


def test_a_second_run_trains_nothing(swept, mnist_dir):
    root, _ = swept
    before = {
        r["run_dir"]: os.path.getmtime(os.path.join(r["run_dir"], "model.safetensors")) for r in results(root / "out")
    }
    again = run_cli("sweep", root / "grid.toml", "--out", root / "out", env={"SEQMNIST_DATA": str(mnist_dir)})
    assert again.returncode == 0, again.stderr
    assert "epoch   1/1" not in again.stdout and "4 trials" in again.stdout
    after = {
        r["run_dir"]: os.path.getmtime(os.path.join(r["run_dir"], "model.safetensors")) for r in results(root / "out")
    }
    assert after == before


def test_include_and_exclude(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID + '[[exclude]]\nhidden = 64\nseed = 2\n[[include]]\ncell = "gru"\nhidden = 16\n')
    trials = load_grid(grid)
    settings = [dict(t.settings) for t in trials]
    assert len(trials) == 4
    assert {"hidden": 64, "seed": 2} not in [{k: s.get(k) for k in ("hidden", "seed")} for s in settings]
    assert settings[-1]["cell"] == "gru" and settings[-1]["hidden"] == 16 and settings[-1]["epochs"] == 1
    assert trials[-1].name.startswith("gru-rows-")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (GRID.replace("subset = 2000", "subsets = 2000"), ["grid.toml:4: subsets: not a setting"]),
        (GRID.replace("hidden = [32, 64]", "hidden = [32, -1]"), ["grid.toml:6: hidden:", "--hidden must be"]),
        (GRID.replace("hidden = [32, 64]", "hidden = []"), ["grid.toml:6: hidden: an empty list"]),
        (GRID.replace("epochs = 1", "epochs = "), ["grid.toml: not valid TOML", "line 3"]),
        (GRID.replace('preset = "quick"', 'preset = "fastest"'), ["grid.toml:2: preset:", "--preset must be one of"]),
        (GRID.replace("seed = [1, 2]", "seed = 1"), ["grid.toml:7: seed: must be a list of values"]),
        (GRID + "[gird]\nx = 1\n", ["grid.toml:8: gird: not a grid table"]),
        (GRID + "[[exclude]]\nhidden = [32, 64]\n", ["no trials"]),
        (GRID.replace("[grid]", "[settings2]"), ["settings2: not a grid table"]),
    ],
)
def test_bad_grid_files_are_one_line_before_anything_trains(text, fragments, tmp_path):
    (tmp_path / "grid.toml").write_text(text)
    result = call_main("sweep", tmp_path / "grid.toml", "--out", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_missing_grid_file(tmp_path):
    assert_one_line_error(
        run_cli("sweep", tmp_path / "none.toml", "--out", tmp_path / "o"), "none.toml: file not found"
    )
    with pytest.raises(SeqmnistError, match="not a setting"):
        (tmp_path / "g.toml").write_text("[grid]\nwarp = [1]\n")
        load_grid(tmp_path / "g.toml")


def test_an_interrupted_sweep_says_how_to_go_on_and_finishes(mnist_dir, tmp_path):
    # SIGTERM to the parent of a pool: every worker saves a checkpoint, one line says what to do
    # (the pickled interruption used to break the pool into a traceback).
    (tmp_path / "grid.toml").write_text(GRID.replace("epochs = 1", "epochs = 2"))
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir)}
    command = cli_command("sweep", tmp_path / "grid.toml", "--out", tmp_path / "out", "--jobs", "2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "out" / "runs").glob("*/metrics.csv")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "run the same command again to continue" in lines[0], stderr
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert len(results(tmp_path / "out")) == 4


# --- Ray: a real head and two worker nodes, separate processes on loopback ---------------------------

RAY_GRID = """\
[settings]
preset = "quick"
epochs = 3
subset = 5000
seed = 1
[grid]
hidden = [32, 64]
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start` a head (no CPUs of its own: trials go to the workers) and two one-CPU workers; always
    `ray stop` them, whatever happens in the tests."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    temp = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "0",
                "--include-dashboard",
                "false",
                "--temp-dir",
                str(temp),
                *common,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        for _ in range(2):
            subprocess.run(
                [ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", *common],
                env=env,
                check=True,
                capture_output=True,
                timeout=180,
            )
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def trial_workers() -> dict[str, int]:
    """Ray workers running a trial, by trial name (each task is titled ray::ray_trial:NAME)."""
    pids = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::ray_trial:"):
            pids[title.removeprefix(b"ray::ray_trial:").decode()] = int(entry)
    return pids


def checkpointed_trial_worker(runs: Path) -> int | None:
    """The worker of a trial that has shipped a checkpoint to the driver and is still training."""
    for name, pid in trial_workers().items():
        if (runs / name / "checkpoint.safetensors").exists() and not (runs / name / "summary.json").exists():
            return pid
    return None


def test_ray_gives_the_local_table_even_when_a_worker_is_killed(cluster, mnist_dir, tmp_path):
    (tmp_path / "grid.toml").write_text(RAY_GRID)
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir)}
    local = run_cli("sweep", tmp_path / "grid.toml", "--out", tmp_path / "local", "--jobs", "2", env=env)
    assert local.returncode == 0, local.stderr

    command = cli_command("sweep", tmp_path / "grid.toml", "--out", tmp_path / "ray", "--ray-address", cluster)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    # Once a trial has shipped its first epoch's checkpoint to the driver, kill its worker in the next.
    while (killed := checkpointed_trial_worker(tmp_path / "ray" / "runs")) is None:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    os.kill(killed, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr
    assert "resuming" in stdout  # the retried trial picked up its checkpoint, not epoch 1
    ours, theirs = results(tmp_path / "ray"), results(tmp_path / "local")
    drop = ("minutes", "run_dir")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ours] == [
        {k: v for k, v in r.items() if k not in drop} for r in theirs
    ]
    for row in ours:  # the run directories came back to the driver's --out
        assert os.path.exists(os.path.join(row["run_dir"], "model.safetensors"))
        assert row["run_dir"].startswith(str(tmp_path / "ray"))


def test_tune_searches_on_the_cluster_and_names_the_best(cluster, mnist_dir, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text(
        f'[settings]\npreset = "quick"\nepochs = 2\nsubset = 2000\ntensorboard = "{tmp_path / "tb"}"\n'
        "[search]\nlr = {loguniform = [0.001, 0.01]}\nhidden = {choice = [16, 32]}\n"
        '[tune]\nsamples = 2\nscheduler = "asha"\ngrace_period = 1\n'
    )
    result = run_cli(
        "tune", space, "--out", tmp_path / "tune", "--ray-address", cluster, env={"SEQMNIST_DATA": str(mnist_dir)}
    )
    assert result.returncode == 0, result.stderr
    import json

    best = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert best["trial"] in result.stdout and os.path.exists(os.path.join(best["run_dir"], "metrics.csv"))
    with open(tmp_path / "tune" / "tune.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["val_acc"]) > 0 for r in rows)
    assert max(float(r["val_acc"]) for r in rows) == pytest.approx(best["val_acc"])
    for row in rows:  # every trial keeps its run directory, finished or stopped early, and its events
        assert os.path.exists(os.path.join(row["run_dir"], "config.json"))
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb" / row["trial"]).iterdir())


def test_bad_search_files_are_one_line(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('[settings]\npreset = "quick"\n[search]\nlr = {normal = [0, 1]}\n')
    assert_one_line_error(call_main("tune", space, "--out", tmp_path / "o"), "space.toml:4: lr: must be {DIST")
    space.write_text('[settings]\npreset = "quick"\n[search]\nhidden = {choice = [16, 0]}\n')
    assert_one_line_error(call_main("tune", space, "--out", tmp_path / "o"), "space.toml:4: hidden:", "--hidden")


def test_a_cluster_that_is_not_there(tmp_path, mnist_dir):
    (tmp_path / "grid.toml").write_text(GRID)
    result = run_cli(
        "sweep",
        tmp_path / "grid.toml",
        "--out",
        tmp_path / "o",
        "--ray-address",
        f"127.0.0.1:{free_port()}",
        env={"SEQMNIST_DATA": str(mnist_dir)},
        timeout=300,
    )
    assert_one_line_error(result, "--ray-address 127.0.0.1:", "cannot join a Ray cluster there")


def test_a_cell_of_ones_own_trains_on_nodes_that_never_saw_its_module(cluster, mnist_dir, tmp_path):
    """The grid names `--cell module:Class` from a folder only the driver has on its path: Ray ships the
    module to the workers (its runtime environment), and the run folder is named by the class."""
    cells = tmp_path / "cells"
    cells.mkdir()
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "cells.md").read_text(), re.S).group(1)
    (cells / "ray_mgu.py").write_text(code.replace('@register_cell("mgu")\n', ""))
    (tmp_path / "grid.toml").write_text(
        '[settings]\npreset = "quick"\ncell = "ray_mgu:MGU"\nhidden = 8\nepochs = 1\nsubset = 300\n[grid]\nseed = [1]\n'
    )
    env = {**os.environ, "SEQMNIST_DATA": str(mnist_dir), "PYTHONPATH": str(cells)}
    done = run_cli("sweep", tmp_path / "grid.toml", "--out", tmp_path / "out", "--ray-address", cluster, env=env)
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert run.name.startswith("MGU-rows-") and (run / "model.safetensors").exists()
