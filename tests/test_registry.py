"""A cell defined in this file alone, registered, then trained, evaluated and read through the public
API and the CLI's --cell, with no line of the package changed; and what the registry refuses."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, call_main
from seqmnist import Config, build_model, cell_names, get_cell, load_run, register_cell, registry
from seqmnist.cells import ElementwiseRNN
from seqmnist.errors import SeqmnistError
from seqmnist.evaluation import evaluate_run
from seqmnist.model import AUTOGRAD_PATH, ModelSpec
from seqmnist.runs import new_run
from seqmnist.train import train


class ScaledTanhRNN(ElementwiseRNN):
    """LeCun's scaled tanh, which neither the engine nor nn.RNN has: it runs by its definition."""

    about = "s_t = 1.7159 tanh(2/3 (x_t U + s_{t-1} W + b)) (LeCun et al. 1998)"
    activation = None

    def phi(self, a: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(2 / 3 * a)


@pytest.fixture
def scaled_tanh(monkeypatch):
    """ScaledTanhRNN registered as "scaled-tanh" for one test (the registry is put back after it)."""
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))
    return register_cell("scaled-tanh")(ScaledTanhRNN)


def scaled_tanh_probabilities(model: ScaledTanhRNN, x: torch.Tensor) -> np.ndarray:
    """The seed's readout of the scaled tanh cell, written out in NumPy (one layer, no bias)."""
    U, W, V = (p.detach().double().numpy() for p in (model.U, model.W, model.V))
    s, total = np.zeros((len(x), W.shape[0])), 0
    for t in range(x.shape[1]):
        s = 1.7159 * np.tanh(2 / 3 * (x[:, t].double().numpy() @ U + s @ W))
        e = np.exp(s @ V - (s @ V).max(1, keepdims=True))
        total = total + e / e.sum(1, keepdims=True)
    return total / x.shape[1]


def test_a_cell_defined_outside_the_package_trains_evaluates_and_reads(scaled_tanh, mnist, tmp_path):
    assert "scaled-tanh" in cell_names() and get_cell("scaled-tanh") is ScaledTanhRNN
    config = Config.from_settings("seed", cell="scaled-tanh", hidden=16, epochs=1, subset=300, eval_train=False)
    summary = train(config, mnist, new_run(tmp_path / "run"), log=lambda line: None)
    assert [session["path"] for session in summary["sessions"]] == [AUTOGRAD_PATH]
    trained = load_run(tmp_path / "run")
    assert type(trained.model) is ScaledTanhRNN
    assert evaluate_run(trained.run, trained.config, mnist)["test_acc"] == summary["test_acc"]
    out = trained.read(mnist.test_x[:20])
    x = trained.sequencer.encode(mnist.test_x[:20])
    np.testing.assert_allclose(out["probabilities"].numpy(), scaled_tanh_probabilities(trained.model, x), rtol=1e-5)


def test_a_cell_defined_outside_the_package_through_the_cli(scaled_tanh, mnist, mnist_dir, tmp_path):
    unwrapped = " ".join(call_main("train", "--help").stdout.split())  # argparse may break a line at the hyphen
    assert "{vanilla," in unwrapped and "scaled-tanh}" in unwrapped and "tanh: s_t = 1.7159 tanh" in unwrapped
    out = tmp_path / "run"
    trained = call_main("train", "--cell", "scaled-tanh", "--hidden", "16", "--epochs", "1", "--subset", "300",
                        "--no-eval-train", "--out", out, "--data-dir", mnist_dir)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "scaled-tanh" in trained.stdout and AUTOGRAD_PATH in trained.stdout
    evaluated = call_main("evaluate", out, "--json", "--data-dir", mnist_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_acc"] == round(
        json.loads((out / "summary.json").read_text())["test_acc"], 4
    )
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_x[0].numpy()).save(image)
    predicted = call_main("predict", out, image, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout.splitlines()[0])["label"] in range(10)


def test_the_registry_refuses_in_one_line(scaled_tanh):
    unknown = r"--cell must be one of vanilla, .*, scaled-tanh, or module.path:ClassName .*\(got 'tanh2'"
    with pytest.raises(SeqmnistError, match=unknown):
        get_cell("tanh2")
    with pytest.raises(SeqmnistError, match="a cell named 'scaled-tanh' is registered already"):
        register_cell("scaled-tanh")(ScaledTanhRNN)
    with pytest.raises(
        SeqmnistError, match=r"--init identity is not for the lstm cell \(it takes uniform, orthogonal\)"
    ):
        build_model(ModelSpec("lstm", init="identity"))
    assert_one_line_error(
        call_main("train", "--cell", "gru", "--init", "identity"), "--init identity is not for the gru cell"
    )
