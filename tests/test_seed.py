"""The seed's run replayed number for number, and the seed's own model files read safely."""

import hashlib
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist import seed
from seqmnist.cells import VanillaRNN
from seqmnist.config import Config
from seqmnist.errors import SeqmnistError
from seqmnist.evaluation import predicted_digits
from seqmnist.measures import measures_for
from seqmnist.seed import (
    SEED_MEASURE,
    SEED_MODEL_SHA256,
    available_seed_models,
    find_seed_model,
    read_theano_model,
    seed_code_readout,
    seed_confusion,
    seed_log,
    seed_sweep,
)
from seqmnist.train import initial_model


def test_initial_weights_are_the_seeds_draws():
    # layer.py: np.random.seed(12345), then U, V, W uniform in +-sqrt(1/fan_in), cast to float32.
    np.random.seed(12345)
    U = np.random.uniform(-np.sqrt(1.0 / 28), np.sqrt(1.0 / 28), (28, 200)).astype("f")
    V = np.random.uniform(-np.sqrt(1.0 / 200), np.sqrt(1.0 / 200), (200, 10)).astype("f")
    W = np.random.uniform(-np.sqrt(1.0 / 200), np.sqrt(1.0 / 200), (200, 200)).astype("f")
    model, _ = initial_model(Config())
    for name, expected in (("U", U), ("V", V), ("W", W)):
        assert np.array_equal(getattr(model, name).detach().numpy(), expected), name


def test_epoch_orders_are_the_seeds_shuffles():
    # layer_rnn.train: every epoch X = X[np.random.permutation(len(X))], after the weights' draws.
    np.random.seed(12345)
    for shape in ((28, 200), (200, 10), (200, 200)):
        np.random.uniform(-1, 1, shape)
    X = np.arange(50000)
    _, orders = initial_model(Config())
    for _ in range(3):
        X = X[np.random.permutation(len(X))]
        assert np.array_equal(next(orders), X)


def test_seed_code_readout_counts_the_last_row_as_uniform():
    g = torch.Generator().manual_seed(0)
    model, x = VanillaRNN(13).reset_parameters(0), torch.rand(7, 6, 28, generator=g)
    with torch.no_grad():
        probs = torch.softmax(model.logits(x, fast=False), dim=-1)
        measured = seed_code_readout(probs)
    np.testing.assert_allclose(measured.sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose((measured * 6 - 0.1).numpy(), probs[:5].sum(0).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(measured.argmax(1), probs[:5].sum(0).argmax(1))
    # One row read: the seed's code saw nothing but the uniform softmax, so it always said 0.
    assert torch.equal(seed_code_readout(probs[:1]).argmax(1), torch.zeros(7, dtype=torch.long))


def test_as_seed_measure_on_two_rows_says_zero_for_blank_images(mnist):
    # Reading 2 rows, the seed's code measured only the first, blank in almost every MNIST image:
    # those images tie exactly and count as digit 0, which is why the seed reports 0.0980 on the test set.
    model = VanillaRNN(200).reset_parameters(3)
    ours, measured = predicted_digits(
        model, Config.from_settings(rows=2).task.sequencer().encode(mnist.test_x), [SEED_MEASURE]
    )
    as_seed = measured["as_seed"]
    blank = mnist.test_x[:, 0].amax(1) == 0
    assert blank.float().mean() > 0.99
    assert (as_seed[blank] == 0).all()
    assert (ours[mnist.test_x[:, :2].amax((1, 2)) == 0] == 0).all()
    assert (as_seed == mnist.test_y).float().mean().item() == pytest.approx(0.098, abs=0.002)


def test_the_seed_measure_applies_to_the_averaged_softmax_only():
    assert measures_for(Config()) == [SEED_MEASURE]
    assert measures_for(Config.from_settings(readout="last")) == []


@pytest.mark.slow
def test_the_seed_preset_replays_the_seeds_first_epoch(mnist_dir, tmp_path):
    # The seed's log, epoch 1 of the 28-row run: train 0.27594, validation 0.2700, as its code measured.
    result = run_cli("train", "--epochs", "1", "--out", tmp_path / "run", env={"SEQMNIST_DATA": str(mnist_dir)})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("epoch"))
    assert "train 0.2759  val 0.2700 as the seed's code measured (seed's log: 0.2759  0.2700)" in line
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert round(float(metrics[4]), 5) == 0.27594 and round(float(metrics[5]), 4) == 0.2700


@pytest.mark.parametrize("k", [6, 14, pytest.param(28, marks=pytest.mark.slow)])  # 28: ~10 s, the slow tier
def test_the_seeds_models_give_its_logged_numbers_exactly(k, mnist_dir, seed_models_dir, tmp_path, monkeypatch):
    model_file = seed_models_dir / f"rnn_step{k}.model"
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == SEED_MODEL_SHA256[k]
    out = tmp_path / "run"
    monkeypatch.setenv("SEQMNIST_DATA", str(mnist_dir))
    # The CLI's own code, in-process; K = 14 by name (found and verified where --seed-models says), the others by file.
    source = ["--seed-models", seed_models_dir] if k == 14 else [model_file]
    result = call_main("import-theano", *source, "--rows", k, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["task"]["rows"] == k
    evaluated = call_main("evaluate", out, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert round(summary["test_acc_as_seed"], 4) == seed_sweep()[k]["test_acc"]
    assert np.array_equal(np.array(summary["confusion_matrix"]), seed_confusion(k))
    if k == 28:
        assert run_cli("plot", out).returncode == 0  # a run like any other, in a process of its own


class Payload:
    """Runs a shell command when unpickled: what a crafted model file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.model"
    evil.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the payload is real: a bare pickle.load runs it
    assert marker.exists()
    marker.unlink()
    result = run_cli("import-theano", evil, "--rows", 28, "--out", tmp_path / "run")
    assert_one_line_error(result, "evil.model: not a model file of the seed's code", "posix.system")
    assert not marker.exists() and not (tmp_path / "run").exists()


def _model_file(arrays) -> bytes:
    buffer = io.BytesIO()
    for array in arrays:
        pickle.dump(array, buffer, protocol=2)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("arrays", "extra", "message"),
    [
        ((np.zeros((28, 8), "f"), np.zeros((8, 10), "f"), np.zeros((8, 8), "f")), b"", None),
        ((np.zeros((28, 8)), np.zeros((8, 10), "f"), np.zeros((8, 8), "f")), b"", "array U is float64 (28, 8)"),
        ((np.zeros((28, 8), "f"), np.zeros((8, 9), "f"), np.zeros((8, 8), "f")), b"", "expected float32 (8, 10)"),
        ((np.zeros((28, 8), "f"), np.zeros((8, 10), "f")), b"", "not a model file of the seed's code"),
        ((np.zeros((28, 8), "f"), np.zeros((8, 10), "f"), np.zeros((8, 8), "f")), b"x", "data after its three"),
        ((np.zeros((28, 8), "f"), np.zeros((8, 10), "f"), np.full((8, 8), np.nan, "f")), b"", "NaN or infinite"),
        (("not", "arrays", "here"), b"", "array U is str"),
    ],
)
def test_model_files_are_checked(arrays, extra, message, tmp_path):
    path = tmp_path / "m.model"
    path.write_bytes(_model_file(arrays) + extra)
    if message is None:
        assert read_theano_model(path)["W"].shape == (8, 8)
        return
    result = call_main("import-theano", path, "--rows", 28, "--out", tmp_path / "run")
    assert_one_line_error(result, message)


def test_vanilla_rnn_matches_the_seed_file_layout(seed_models_dir):
    arrays = read_theano_model(seed_models_dir / "rnn_step28.model")
    shapes = {k: tuple(v.shape) for k, v in VanillaRNN(200).state_dict().items()}
    assert {k: v.shape for k, v in arrays.items()} == shapes


# --- the seed's models by name: found, verified, cached, or one line saying how to provide them ----


@pytest.fixture
def no_seed_models(tmp_path, monkeypatch):
    """No $SEQMNIST_SEED_MODELS, an empty cache, and no network (the download URL refuses at once)."""
    monkeypatch.delenv("SEQMNIST_SEED_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(seed, "SEED_MODELS_URL", "http://127.0.0.1:9/")
    return tmp_path / "cache" / "seqmnist" / "seed-models"


def test_by_name_offline_with_an_empty_cache_says_how_to_provide_it(no_seed_models, tmp_path):
    result = call_main("import-theano", "--rows", 28, "--out", tmp_path / "run")
    assert_one_line_error(result, "could not download rnn_step28.model", "--seed-models or SEQMNIST_SEED_MODELS")
    assert not (tmp_path / "run").exists() and list(no_seed_models.iterdir()) == []


def test_a_cached_model_is_verified_and_needs_no_network(no_seed_models, tmp_path, monkeypatch):
    path = no_seed_models / "rnn_step6.model"
    path.parent.mkdir(parents=True)
    path.write_bytes(_model_file((np.zeros((28, 8), "f"), np.zeros((8, 10), "f"), np.zeros((8, 8), "f"))))
    result = call_main("import-theano", "--rows", 6, "--out", tmp_path / "run")
    assert_one_line_error(result, f"{path}: SHA256 ", "not the seed's published rnn_step6.model")
    monkeypatch.setitem(SEED_MODEL_SHA256, 6, hashlib.sha256(path.read_bytes()).hexdigest())
    assert find_seed_model(6) == path  # the cache, verified, and no download tried


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--rows", 5], False, "the seed published models for K = 2, 4, ..., 28 rows only (got --rows 5)"),
        (["--rows", 28, "--seed-models", "DIR"], False, "DIR/rnn_step28.model: missing; copy the seed's"),
        (["--rows", 28], True, "DIR/rnn_step28.model: missing; copy the seed's"),
        (["--rows", 28, "--seed-models", "DIR", "m.model"], False, "drop it or MODEL_FILE"),
        (["--rows", 28, "--seed-models", "DIR/nope"], False, "DIR/nope: not a directory (from --seed-models)"),
    ],
)
def test_by_name_errors_are_one_line(args, env, message, no_seed_models, tmp_path, monkeypatch):
    directory = tmp_path / "models"
    directory.mkdir()
    if env:
        monkeypatch.setenv("SEQMNIST_SEED_MODELS", str(directory))
    args = [str(a).replace("DIR", str(directory)) for a in args]
    result = call_main("import-theano", *args, "--out", tmp_path / "run")
    assert_one_line_error(result, message.replace("DIR", str(directory)))


def test_reproduce_takes_the_seed_models_there_are(no_seed_models, tmp_path):
    logged = []
    assert available_seed_models(None, logged.append) == {}  # offline, empty cache: a report without that section
    assert len(logged) == 1 and "0 of 14" in logged[0] and "could not download rnn_step2.model" in logged[0]
    assert "rnn_step4.model" not in logged[0]  # the first failed download ends the downloads
    with pytest.raises(SeqmnistError, match="holds no rnn_stepK.model file"):
        available_seed_models(tmp_path, logged.append)


def test_settings_that_do_not_change_what_is_learnt_keep_the_seeds_logs_as_yardstick():
    """config.NEUTRAL (compute, device, tensorboard) is read by the seed comparison as by resume and the
    trial name: a TensorBoard folder or the definition path leave the seed's recipe as it is."""
    from seqmnist.config import IDENTITY, NEUTRAL

    assert {"compute", "device", "tensorboard"} <= set(NEUTRAL) and "tensorboard" not in IDENTITY
    for neutral in ({"tensorboard": "tb"}, {"compute": "definition"}, {"device": "cpu"}, {"rows": 6, "epochs": 2}):
        assert seed.is_seed_recipe(Config.from_settings("seed", **neutral)), neutral
    assert seed_log(Config.from_settings("seed", tensorboard="tb", epochs=1))[1]["train_acc"] == 0.27594
    assert not seed.is_seed_recipe(Config.from_settings("seed", lr=0.02))


@pytest.mark.slow
def test_a_tensorboard_folder_keeps_the_seeds_log_beside_the_epoch_line(mnist_dir, tmp_path):
    """--tensorboard only says where records go: the replay still prints the seed's logged accuracies
    beside its own (equal to the digit where the golden bits hold; near them on any machine)."""
    trained = call_main("train", "--preset", "seed", "--epochs", "1", "--rows", "6", "--tensorboard", tmp_path / "tb",
                        "--out", tmp_path / "run", "--data-dir", mnist_dir)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    line = next(line for line in trained.stdout.splitlines() if line.startswith("epoch   1/1"))
    found = re.search(r"train (\S+)  val (\S+) as the seed's code measured \(seed's log: (\S+)  (\S+)\)", line)
    assert found, line
    ours, logged = map(float, found.group(1, 2)), map(float, found.group(3, 4))
    assert all(abs(a - b) < 0.005 for a, b in zip(ours, logged, strict=True))
    assert any((tmp_path / "tb").iterdir())
