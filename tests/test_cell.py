"""The cell contract (seqmnist.cell): docs/cells.md's example, run as written, trains, evaluates,
predicts, exports to ONNX and is benchmarked through the CLI; a cell's parallel form is taken and held
to its step; the stack's initial weights come from the run's seed."""

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist import Cell, Config, build_model, register_cell, registry
from seqmnist.bench import matrix_configs
from seqmnist.cell import CellStack, steps_of
from seqmnist.model import AUTOGRAD_PATH, ModelSpec
from seqmnist.recipes import make_optimizer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cells.md"


def example_code() -> str:
    block = re.search(r"<!-- cell-example.*?-->\s*```python\n(.*?)```", DOCS.read_text(), re.S)
    return block.group(1)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as it is, put back after the test."""
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))


@pytest.fixture
def mgu(fresh_registry) -> type[Cell]:
    namespace: dict = {"__name__": "docs_cells_example"}
    exec(compile(example_code(), str(DOCS), "exec"), namespace)
    return namespace["MGU"]


def test_the_example_is_short_and_the_contract_small():
    assert len(example_code().strip().splitlines()) <= 40
    own = [name for name, member in vars(Cell).items() if inspect.isfunction(member) or isinstance(member, classmethod)]
    assert len(own) <= 12, own
    assert {"__init__", "step"} <= set(own)


@pytest.mark.slow
def test_the_example_cell_trains_evaluates_predicts_exports_and_benchmarks(mgu, mnist, mnist_dir, tmp_path):
    out, data = tmp_path / "run", ("--data-dir", mnist_dir)
    trained = call_main("train", "--preset", "quick", "--cell", "mgu", "--hidden", "32", "--epochs", "1",
                        "--subset", "10000", "--lr", "0.01", "--out", out, *data)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "mgu 32" in trained.stdout and AUTOGRAD_PATH in trained.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.5  # a tenth is chance

    evaluated = call_main("evaluate", out, "--json", *data)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_acc"] == round(summary["test_acc"], 4)

    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_x[0].numpy()).save(image)
    predicted = call_main("predict", out, image, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout.splitlines()[0])["label"] == int(mnist.test_y[0])

    exported = call_main("export", out, "--onnx", tmp_path / "mgu.onnx", "--check", "200", *data)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "mgu.step.onnx").exists()

    assert any(config.model.cell == "mgu" for config in matrix_configs())  # bench --all's rows
    benched = call_main("bench", "--cell", "mgu", "--hidden", "16", "--seconds", "1", "--json")
    assert benched.returncode == 0, benched.stderr
    (comparison,) = json.loads(benched.stdout)["comparisons"]
    assert comparison["speedup"] > 0


def test_the_example_cell_takes_the_recurrent_rate_and_refuses_what_it_does_not_take(mgu):
    config = Config.from_settings("quick", cell="mgu", hidden=8, layers=2, recurrent_lr=0.1, decay_recurrent=False)
    model = build_model(config.model_spec())
    _, recurrent = make_optimizer(model, config.recipe).param_groups
    assert len(recurrent["params"]) == 4 and recurrent["lr_scale"] == 0.1
    with pytest.raises(Exception, match="--init is not for the mgu cell"):
        Config.from_settings("quick", cell="mgu", init="orthogonal")
    assert_one_line_error(call_main("train", "--cell", "mgu", "--norm", "batch"), "--norm is not for the mgu cell")


class Leaky(Cell):
    """h_t = h_{t-1} / 2 + x_t W: a linear recurrence, so every step's state has a closed form."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__(inputs, hidden)
        self.w = nn.Linear(inputs, hidden, bias=False)

    def step(self, h: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h / 2 + self.w(x_t)
        return h, h

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """h_t = sum over k <= t of 2^(k - t) u_k, as one cumulative sum."""
        scale = 2.0 ** torch.arange(x.shape[1], dtype=x.dtype)[:, None]
        return torch.cumsum(self.w(x) * scale, dim=1) / scale


def test_a_parallel_form_is_taken_and_equals_the_step(fresh_registry):
    register_cell("leaky")(Leaky)
    spec = ModelSpec("leaky", inputs=3, hidden=5, layers=2, bias=True, readout="last", steps=9)
    model = build_model(spec).double().reset_parameters(1)
    assert isinstance(model, CellStack) and "parallel form" in model.training_path(torch.device("cpu"))
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    torch.testing.assert_close(model.logits(x), model.definition(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.stepped_logits(x), model.logits(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.cells[0].sequence(x), steps_of(model.cells[0], x), rtol=0, atol=1e-12)


def test_the_initial_weights_come_from_the_seed(mgu):
    spec = ModelSpec("mgu", hidden=8, layers=2, bias=True, readout="last")
    one, again, other = (build_model(spec).reset_parameters(seed) for seed in (1, 1, 2))
    for a, b, c in zip(one.parameters(), again.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)


def write_module(folder: Path, name: str, registered: bool) -> Path:
    """docs/cells.md's example as a module of one's own, outside the package (with or without its
    @register_cell line)."""
    code = example_code() if registered else example_code().replace('@register_cell("mgu")\n', "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(code)
    return folder


@pytest.mark.slow
def test_a_cell_named_by_its_module_trains_and_is_read_again_in_new_processes(mnist_dir, tmp_path):
    """--cell module.path:ClassName: config.json names the module, so every later command imports it again;
    once it is gone, one line says so."""
    cells = write_module(tmp_path / "mine", "my_cells", registered=False)
    env = {"PYTHONPATH": str(cells), "SEQMNIST_DATA": str(mnist_dir)}
    out = tmp_path / "run"
    trained = run_cli("train", "--preset", "quick", "--cell", "my_cells:MGU", "--hidden", "16", "--epochs", "1",
                      "--subset", "1000", "--out", str(out), env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert json.loads((out / "config.json").read_text())["model"]["cell"] == "my_cells:MGU"
    evaluated = run_cli("evaluate", str(out), "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    exported = run_cli("export", str(out), "--onnx", str(tmp_path / "m.onnx"), "--check", "50", env=env)
    assert exported.returncode == 0, exported.stderr
    (cells / "my_cells.py").unlink()
    assert_one_line_error(
        run_cli("evaluate", str(out), env=env), "config.json", "--cell my_cells:MGU: cannot import my_cells"
    )


def test_an_installed_packages_cell_is_listed_and_built(tmp_path):
    """A package whose metadata names an entry point in seqmnist.cells (as `pip install` leaves it in
    site-packages: the module and its .dist-info folder side by side) is among train --help's cells."""
    site = write_module(tmp_path / "site", "mgu_package", registered=False)
    info = site / "mgu_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mgu-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[seqmnist.cells]\nmgu = mgu_package:MGU\n")
    env = {"PYTHONPATH": str(site)}
    helped = run_cli("train", "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    unwrapped = " ".join(helped.stdout.split())
    assert ",s4d,mgu}" in unwrapped and "mgu: one forget gate" in unwrapped
    built = run_cli("bench", "--cell", "mgu", "--hidden", "8", "--seconds", "0.5", "--json", env=env)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["comparisons"][0]["cell"] == "mgu"
