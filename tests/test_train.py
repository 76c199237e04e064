"""Short real-data training runs: they learn, they are reproducible, their files are right."""

import csv
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from seqmnist.cells import VanillaRNN
from seqmnist.config import Config
from seqmnist.errors import SeqmnistError
from seqmnist.measures import MEASURES, Measure, register
from seqmnist.runs import Position, Run, TrainingState, metric_columns, new_run
from seqmnist.train import train

QUICK = {"epochs": 2, "subset": 10000, "lr": 0.1}


def quiet(_line: str) -> None:
    pass


def numpy_predict(weights, images, rows):
    U, W, V = weights["U"], weights["W"], weights["V"]
    s = np.zeros((len(images), W.shape[0]), dtype=np.float64)
    total = 0
    for t in range(rows):
        s = np.tanh(images[:, t] @ U + s @ W)
        z = s @ V
        e = np.exp(z - z.max(1, keepdims=True))
        total = total + e / e.sum(1, keepdims=True)
    return total.argmax(1)


@pytest.fixture(scope="module")
def quick_run(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = Config.from_settings("seed", **QUICK)
    summary = train(config, mnist, new_run(out), log=quiet)
    return out, config, summary


def test_short_run_learns_and_writes_its_files(quick_run, mnist):
    out, config, summary = quick_run
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == metric_columns()
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_acc"]) > 0.3  # chance is 0.1
    assert summary["test_acc"] > 0.3
    saved = json.loads((out / "summary.json").read_text())
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000
    assert np.array_equal(matrix.sum(1), np.bincount(mnist.test_y.numpy(), minlength=10))  # rows = true digit
    assert np.trace(matrix) / 10000 == pytest.approx(saved["test_acc"], abs=1e-6)
    assert json.loads((out / "config.json").read_text()) == config.to_dict()
    assert saved["sessions"][0]["threads"] >= 1 and saved["sessions"][0]["path"].startswith("the compiled engine")


def test_saved_model_recomputes_with_numpy(quick_run, mnist):
    out, config, summary = quick_run
    weights = {k: v.astype(np.float64) for k, v in load_file(out / "model.safetensors").items()}
    assert {k: v.shape for k, v in weights.items()} == {"U": (28, 200), "W": (200, 200), "V": (200, 10)}
    images = mnist.test_x.numpy().astype(np.float64) / config.task.input_scale
    predicted = numpy_predict(weights, images, config.task.rows)
    accuracy = (predicted == mnist.test_y.numpy()).mean()
    assert accuracy == pytest.approx(summary["test_acc"], abs=3e-4)  # float32 vs float64: a few images at most


@pytest.mark.slow
def test_same_seed_same_metrics(mnist, tmp_path):
    config = Config.from_settings("seed", epochs=1, subset=3000, lr=0.1)
    first = train(config, mnist, new_run(tmp_path / "a"), log=quiet)
    second = train(config, mnist, new_run(tmp_path / "b"), log=quiet)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert {k: v for k, v in first.items() if k not in ("sessions", "minutes")} == {
        k: v for k, v in second.items() if k not in ("sessions", "minutes")
    }
    other = train(Config.from_settings("seed", epochs=1, subset=3000, lr=0.1, seed=7), mnist, new_run(tmp_path / "c"))
    assert other != first


@pytest.mark.slow
def test_fast_engine_trains_like_autograd(mnist, tmp_path):
    settings = {"epochs": 1, "subset": 2000, "lr": 0.1, "rows": 14}
    fast = train(Config.from_settings("seed", **settings), mnist, new_run(tmp_path / "f"), log=quiet)
    definition = Config.from_settings("seed", compute="definition", **settings)
    slow = train(definition, mnist, new_run(tmp_path / "s"), log=quiet)
    assert fast["train_acc"] == pytest.approx(slow["train_acc"], abs=2e-3)
    fw = load_file(tmp_path / "f" / "model.safetensors")
    sw = load_file(tmp_path / "s" / "model.safetensors")
    for name in "UWV":
        assert np.abs(fw[name] - sw[name]).max() <= 1e-4 * np.abs(sw[name]).max()


def test_existing_run_is_never_overwritten(quick_run):
    out, _, _ = quick_run
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SeqmnistError, match="is a finished run .* --resume .* --epochs N"):
        new_run(out)
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "--epochs must be an integer >= 1 (got 0)"),
        ({"batch_size": -5}, "--batch-size must be an integer >= 1 (got -5)"),
        ({"hidden": 0}, "--hidden must be an integer in 1..65536"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0 (got nan)"),
        ({"lr": -0.1}, "--lr must be a finite number > 0"),
        ({"lr": float("inf")}, "--lr must be a finite number > 0"),
        ({"rows": 29}, "--rows must be an integer in 1..28 (got 29)"),
        ({"rows": 0}, "--rows must be an integer in 1..28"),
        ({"subset": 0}, "--subset must be an integer in 1..50000"),
        ({"compute": "turbo"}, "--compute must be one of fast, definition"),
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda"),
        ({"eval_every": 0}, "--eval-every must be an integer >= 1 (got 0)"),
    ],
)
def test_bad_settings_are_rejected_with_flag_and_range(settings, message):
    with pytest.raises(SeqmnistError) as info:
        Config.from_settings("seed", **settings)
    assert message in str(info.value)


def test_subset_larger_than_the_training_set_is_refused():
    with pytest.raises(SeqmnistError, match=r"--subset must be an integer in 1..50000 .*got 999999"):
        Config.from_settings("seed", subset=999999)


def test_batches_are_whole_as_the_seeds():
    # The seed ran int(n / mini_batch) batches: a last partial batch is left out.
    assert Config.from_settings("seed", subset=250).recipe.batches == 2
    assert Config.from_settings("seed").recipe.batches == 500
    with pytest.raises(SeqmnistError, match="--batch-size 300 is larger than the 250 training images"):
        Config.from_settings("seed", subset=250, batch_size=300)


def test_unknown_preset():
    with pytest.raises(SeqmnistError, match="--preset must be one of seed, quick"):
        Config.from_settings("fastest")


@pytest.mark.slow
def test_eval_every_skips_accuracy_but_not_the_last_epoch(mnist, tmp_path):
    config = Config.from_settings("seed", epochs=3, subset=1000, lr=0.1, eval_every=2)
    summary = train(config, mnist, new_run(tmp_path / "r"), log=quiet)
    rows = Run(tmp_path / "r").read_metrics()
    evaluated = [not math.isnan(r["val_acc"]) and not math.isnan(r["val_acc_as_seed"]) for r in rows]
    assert evaluated == [False, True, True]
    assert summary["val_acc"] == rows[-1]["val_acc"] and 0 <= summary["test_acc_as_seed"] <= 1


@pytest.fixture
def first_step_measure():
    """A measure of this file alone: the digit the first step's softmax favours."""
    register(
        Measure(
            name="first_step",
            label="by the first step alone",
            applies=lambda config: True,
            scores=lambda probs: probs[0],
            epoch_note=lambda row, logged: f"first step {row['val_acc_first_step']:.4f}; ",
        )
    )
    yield
    del MEASURES["first_step"]


def test_a_registered_measure_is_recorded_and_logged_by_the_generic_loop(first_step_measure, mnist, tmp_path):
    lines = []
    config = Config.from_settings("quick", epochs=1, subset=500)
    summary = train(config, mnist, new_run(tmp_path / "r"), log=lines.append)
    row = Run(tmp_path / "r").read_metrics()[0]
    assert 0 <= row["val_acc_first_step"] <= 1 and 0 <= summary["test_acc_first_step"] <= 1
    assert math.isnan(row["val_acc_as_seed"]) and summary["test_acc_as_seed"] is None  # the seed's: not this readout
    assert any(f"first step {row['val_acc_first_step']:.4f}; val {row['val_acc']:.4f}" in line for line in lines)
    assert f"{summary['test_acc_first_step']:.4f} by the first step alone" in lines[-1]


def test_metrics_file_of_another_layout_is_refused(tmp_path):
    run = Run(tmp_path)
    run.metrics.write_text("epoch,train_loss,train_acc,val_acc,seconds\n1,2.0,0.5,0.5,1.0\n")
    with pytest.raises(SeqmnistError, match="not a readable metrics file .*columns"):
        run.read_metrics()


def test_checkpoint_of_an_unknown_format_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    run, model = Run(tmp_path), VanillaRNN(8).reset_parameters(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.save_checkpoint(model, optimizer, TrainingState(Position(epoch=2)))
    assert run.load_checkpoint(model, optimizer).position.epoch == 2
    # The first layout: bare weight names, no format in the header.
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(run.checkpoint), metadata={"state": "{}"})
    with pytest.raises(SeqmnistError, match="checkpoint format 'an older seqmnist' is not 'seqmnist-checkpoint/3'"):
        run.load_checkpoint(model, optimizer)


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The seed preset's first epoch on 2,000 images, one thread: (loss, train and val accuracy as the seed
# measured, test accuracy, the model file's SHA-256), per PyTorch version and multiply fingerprint
# (seqmnist.machine.multiply_fingerprint): other kernels round otherwise, so elsewhere the test skips.
GOLDEN = {
    ("2.13.0+cpu", "5be82f764d92"): (  # MKL 2024.2 on an AVX-512 + AMX Xeon
        2.293238670349121,
        (0.16050000488758087, 0.16140000522136688),
        0.15559999644756317,
        "acd75c1ae2a0f4905dfe0627b16be7c76380650acf866696b0add01830419198",
    ),
}


def test_golden_seed_run(mnist, tmp_path, one_thread):
    # Pins the seed path itself: its initial weights, shuffles, input scale, loss and engine arithmetic.
    # A change to any of them changes these numbers (two runs compared with each other would not notice).
    import hashlib

    import torch

    from seqmnist.machine import multiply_fingerprint

    here = (torch.__version__, multiply_fingerprint())
    if here not in GOLDEN:
        pytest.skip(f"golden bits made with torch and multiply kernels {sorted(GOLDEN)}; here {here}")
    loss, as_seed, test_acc, digest = GOLDEN[here]
    summary = train(Config.from_settings("seed", epochs=1, subset=2000), mnist, new_run(tmp_path / "g"), log=quiet)
    row = Run(tmp_path / "g").read_metrics()[0]
    assert row["train_loss"] == loss
    assert (row["train_acc_as_seed"], row["val_acc_as_seed"]) == as_seed
    assert summary["test_acc"] == test_acc
    assert hashlib.sha256((tmp_path / "g" / "model.safetensors").read_bytes()).hexdigest() == digest


def test_a_quick_look_reads_part_of_validation_and_test_and_says_so(mnist, tmp_path):
    """--eval-images N: validation and test read their first N images, and every line that reports
    accuracies says they do not compare with a full run's."""
    lines = []
    config = Config.from_settings("quick", subset=500, epochs=1, eval_images=300, hidden=16)
    summary = train(config, mnist, new_run(tmp_path / "run"), log=lines.append)
    assert sum(map(sum, summary["confusion_matrix"])) == 300
    caveat = "validation and test on their first 300 images: not comparable with a full run"
    assert caveat in lines[0] and caveat in lines[-1]
    assert Config.from_settings("quick").not_comparable == ""
