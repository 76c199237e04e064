"""Devices and threads: what `auto` picks, the line that says so, a GPU-trained run read on a CPU,
resuming across devices, and the thread count taken from the CPUs this process may use."""

import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, call_main
from seqmnist.config import Config
from seqmnist.data import MNIST
from seqmnist.machine import available_cpus, pick_device
from seqmnist.runs import new_run
from seqmnist.train import Trainer, train

CUDA = torch.cuda.is_available()


def test_auto_keeps_the_seeds_replay_on_the_cpu():
    assert pick_device("auto", replay=True)[0].type == "cpu"
    assert pick_device("auto", replay=False)[0].type == ("cuda" if CUDA else "cpu")
    assert pick_device("cpu", replay=False)[0].type == "cpu"


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_one_is_one_line_and_leaves_nothing(mnist_dir, tmp_path):
    out = tmp_path / "run"
    result = call_main("train", "--preset", "quick", "--subset", "500", "--device", "cuda", "--out", out,
                       "--data-dir", mnist_dir)  # fmt: skip
    assert_one_line_error(result, "--device cuda: no CUDA device", "--device cpu")
    assert not out.exists()


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_training_says_where_and_how_it_runs(mnist_dir, tmp_path, keep_threads):
    result = call_main("train", "--preset", "quick", "--subset", "500", "--epochs", "1", "--threads", "1",
                       "--device", "cpu", "--out", tmp_path / "run", "--data-dir", mnist_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("rows: 28 steps of 28 pixels; vanilla 128 (bias), uniform init, last; adam")
    assert re.fullmatch(r"on cpu \(asked for\), the compiled engine, 1 thread; under a minute for epochs 1-1", second)
    session = json.loads((tmp_path / "run" / "summary.json").read_text())["sessions"][0]
    assert (session["device"], session["path"], session["threads"]) == ("cpu", "the compiled engine", 1)


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"compute": "definition"}, "PyTorch autograd through the step-by-step definition"),
        ({"cell": "lstm"}, "PyTorch's fused LSTM"),
        ({"cell": "gru"}, "PyTorch's fused GRU"),
        ({"cell": "indrnn", "optimizer": "adam"}, "the compiled engine"),
        ({}, "the compiled engine with its own SGD step"),
        ({"clip": 1.0}, "the compiled engine"),
    ],
)
def test_the_path_is_named_for_every_cell_and_engine(mnist, tmp_path, settings, path):
    """Named from the trainer's model and optimiser (no epoch needs to run for that)."""
    config = Config.from_settings("seed", hidden=8, rows=2, epochs=1, subset=100, **settings)
    lines = []
    trainer = Trainer.start(config, mnist, new_run(tmp_path / "run"), resume=False, log=lines.append)
    assert lines[1].split(", ")[1] == path
    assert trainer.state.sessions[0]["path"] == path


@pytest.fixture(scope="module")
def gpu_trained_run(quick_run, tmp_path_factory):
    """A copy of a finished run whose config says it trained on CUDA: what a user brings over from a GPU
    machine (its checkpoint lets it be trained further)."""
    out = tmp_path_factory.mktemp("gpu") / "run"
    shutil.copytree(quick_run, out)
    config = json.loads((out / "config.json").read_text())
    config["run"]["device"] = "cuda"
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_gpu_trained_run_evaluates_plots_and_predicts_on_a_cpu(gpu_trained_run, mnist_dir, tmp_path):
    evaluated = call_main("evaluate", gpu_trained_run, "--json", "--data-dir", mnist_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0.1 < json.loads(evaluated.stdout)["test_acc"] <= 1
    image = tmp_path / "digit.png"
    Image.fromarray(MNIST.load(mnist_dir).test_x[0].numpy()).save(image)
    predicted = call_main("predict", gpu_trained_run, image, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert "label" in json.loads(predicted.stdout.splitlines()[0])
    plotted = call_main("plot", gpu_trained_run, "--data-dir", mnist_dir)
    assert plotted.returncode == 0, plotted.stderr


def test_a_gpu_trained_run_is_served_on_a_cpu(gpu_trained_run):
    """The page's app loads the run and answers GET /api/model (one ASGI request, no server needed)."""
    from seqmnist.web.app import create_app

    status, body = asyncio.run(asgi_get(create_app(gpu_trained_run), "/api/model"))
    assert status == 200 and json.loads(body)["steps"] == 28


async def asgi_get(app, path: str) -> tuple[int, bytes]:
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "root_path": ""}  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_resuming_a_gpu_run_on_a_cpu_is_asked_for_by_flag(gpu_trained_run, mnist_dir):
    refused = call_main("train", "--resume", gpu_trained_run, "--epochs", "2", "--data-dir", mnist_dir)
    assert_one_line_error(refused, "--device cuda: no CUDA device", "--resume RUN --device cpu")
    resumed = call_main("train", "--resume", gpu_trained_run, "--epochs", "2", "--device", "cpu",
                        "--data-dir", mnist_dir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((gpu_trained_run / "config.json").read_text())["run"]["device"] == "cpu"
    summary = json.loads((gpu_trained_run / "summary.json").read_text())
    assert summary["epochs"] == 2 and [s["device"] for s in summary["sessions"]] == ["cpu", "cpu"]


def test_a_refused_resume_leaves_the_runs_device_as_it_was(gpu_trained_run, tmp_path):
    """--device is recorded only once the resume is accepted: a finished run without --epochs is refused,
    and its config.json still names the device it trained on."""
    run = tmp_path / "run"
    shutil.copytree(gpu_trained_run, run)  # (an earlier test may have moved the module's copy to the CPU)
    config = json.loads((run / "config.json").read_text())
    config["run"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "config.json").read_bytes()
    refused = call_main("train", "--resume", run, "--device", "cpu")
    assert_one_line_error(refused, "is a finished run", "--epochs N")
    assert (run / "config.json").read_bytes() == before


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_resume_across_devices_keeps_every_tensor_on_one_device(mnist, tmp_path):
    """Adam's state is loaded where the weights are: trained on the GPU, resumed on the CPU, and back."""
    from seqmnist.runs import open_for_resume

    config = Config.from_settings("quick", subset=500, epochs=3, device="cuda")
    run = new_run(tmp_path / "run")
    train(Config.from_settings("quick", subset=500, epochs=1, device="cuda"), mnist, run, log=lambda line: None)
    for device in ("cpu", "cuda"):
        run, config = open_for_resume(run.dir, config.recipe.epochs, device=device)
        trainer = Trainer.start(config, mnist, run, resume=True, log=lambda line: None)
        devices = {p.device.type for p in trainer.model.parameters()}
        devices |= {t.device.type for s in trainer.optimizer.state.values() for t in s.values() if t.dim()}
        assert devices == {device}


def test_threads_default_to_the_cpus_this_process_may_use():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    pinned = subprocess.run(
        [sys.executable, "-c",
         "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
         "from seqmnist.machine import available_cpus, use_threads; print(available_cpus(), use_threads(None))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pinned.stdout.split() == ["1", "1"], pinned.stderr


def test_bad_thread_count_is_one_line(mnist_dir, tmp_path):
    result = call_main("train", "--preset", "quick", "--threads", "0", "--out", tmp_path / "r", "--data-dir", mnist_dir)
    assert_one_line_error(result, "--threads must be an integer >= 1")


PAGE_FAULTS = """
import resource, sys, torch
from seqmnist.machine import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(100, 784, 128)  # 40 MB, a pixel batch's activations: allocated, touched, freed
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_a_training_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    """Twenty 40 MB tensors one after another: by default each is a fresh mapping, ~10,000 page faults
    apiece; after keep_freed_memory (what train does on the CPU) the heap serves the same block again,
    faulted in once or twice as the heap happens to lie (19,500-19,620 faults measured: a bound of a
    tenth of the default's 196,000 is on that edge)."""
    counts = {}
    for mode in ("default", "keep"):
        result = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        kept, faults = result.stdout.split()
        counts[mode] = (kept, int(faults))
    assert counts["default"][0] == "None" and counts["default"][1] > 20 * 5_000
    assert counts["keep"][0] == "True" and counts["keep"][1] < counts["default"][1] / 5
