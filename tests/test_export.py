"""seqmnist export: the step-by-step form every export runs on, the two ONNX files against PyTorch in
onnxruntime (a quick run, the seed's own model, every cell), and what export refuses in one line."""

import json
import time

import onnx
import pytest
import torch

from conftest import assert_one_line_error, call_main, run_cli
from seqmnist import Cell, Config, build_model, cell_names, get_cell, load_run, readout_names, register_cell, registry
from seqmnist.export import OneStep, export_onnx, onnx_differences, step_path
from seqmnist.runs import Run, TrainedModel, new_run
from seqmnist.seed import find_seed_model, import_theano

EXPORTABLE = cell_names()


def model_of(cell: str, readout: str, **settings) -> tuple[Config, torch.nn.Module]:
    config = Config.from_settings("quick", cell=cell, readout=readout, hidden=16, bias=True, **settings)
    return config, build_model(config.model_spec()).reset_parameters(3).eval()


@pytest.mark.parametrize(
    ("cell", "readout"), [(c, r) for c in EXPORTABLE for r in readout_names() if r in get_cell(c).readouts]
)
def test_the_step_form_is_the_definition_and_the_readouts_running_belief(cell, readout):
    """What the step file holds, in float64: OneStep from zeros, step after step, gives the belief the
    readout's ``running`` gives of the definition's logits, after every step."""
    _, model = model_of(cell, readout, layers=2)
    assert_steps_are_the_definition(model.double())


def assert_steps_are_the_definition(model: torch.nn.Module) -> None:
    """OneStep from zeros, step after step over 28 random steps, gives after every step the belief the
    readout's ``running`` gives of the definition's logits (float64)."""
    x = torch.rand(5, 28, 28, dtype=torch.float64)
    step = OneStep(model)
    state = torch.zeros(5, sum(step.parts), dtype=torch.float64)
    expected = model.readout.running(model.logits(x, fast=False))
    with torch.no_grad():
        for t in range(28):
            state, probabilities = step(x[:, t], state)
            torch.testing.assert_close(probabilities, expected[t], rtol=0, atol=1e-12)
    assert state[:, -1].eq(28).all()  # the steps read, the state's last column


def test_the_step_file_lies_beside_the_sequence_file(tmp_path):
    assert step_path(tmp_path / "model.onnx") == tmp_path / "model.step.onnx"
    assert step_path(tmp_path / "model") == tmp_path / "model.step.onnx"


class BranchingCell(Cell):
    """A cell whose step branches on its data, which torch.export cannot trace."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__(inputs, hidden)
        self.w = torch.nn.Linear(inputs, hidden)

    def step(self, h: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.w(x_t) + h)
        if h.sum() > 0:
            h = -h
        return h, h


@pytest.fixture
def branching(monkeypatch):
    monkeypatch.setattr(registry, "_CELLS", dict(registry._CELLS))
    return register_cell("branching")(BranchingCell)


def saved_run(directory, config: Config, model=None) -> Run:
    """A run directory holding config.json and, given a model, its final weights."""
    run = new_run(directory)
    run.start(config)
    if model is not None:
        run.save_model(model)
    return run


def test_an_unexportable_cell_and_a_run_without_a_model_are_refused_in_one_line(branching, tmp_path):
    config = Config.from_settings("quick", cell="branching", hidden=8)
    run = saved_run(tmp_path / "branching", config, build_model(config.model_spec()))
    assert_one_line_error(
        call_main("export", run.dir, "--onnx", tmp_path / "m.onnx"),
        "torch.onnx could not export the branching cell: Failed to export the model with torch.export",
    )
    unfinished = saved_run(tmp_path / "unfinished", Config.from_settings("quick"))
    assert_one_line_error(call_main("export", unfinished.dir, "--onnx", tmp_path / "m.onnx"), "no final model")
    assert_one_line_error(call_main("export", tmp_path / "nothing", "--onnx", tmp_path / "m.onnx"), "no such run")
    assert not list(tmp_path.glob("*.onnx"))


def assert_matches_pytorch(trained: TrainedModel, path, images: torch.Tensor, name: str) -> dict[str, float]:
    """Both files within 1e-5 of PyTorch's probabilities after every step, in onnxruntime; printed."""
    started = time.perf_counter()
    exported = export_onnx(trained, path)
    differences = onnx_differences(exported, trained, images)
    print(
        f"{name}: onnxruntime against PyTorch on {len(images)} images, largest difference "
        f"{differences['sequence']:.2e} (whole sequence), {differences['step']:.2e} (step by step); "
        f"{time.perf_counter() - started:.1f} s"
    )
    assert max(differences.values()) < 1e-5, differences
    for file in (exported.sequence, exported.step):
        saved = onnx.load(file)
        onnx.checker.check_model(saved, full_check=True)
        interface = json.loads({p.key: p.value for p in saved.metadata_props}["seqmnist"])
        assert interface["input_scale"] == trained.sequencer.input_scale
        assert interface["image"]["side"] == 28 and interface["image"]["centre_of_mass"] == [14.0, 14.0]
        assert sum(interface["state"]["cell"]) + interface["state"]["readout_total"] + 1 == exported.state_width
    return differences


@pytest.mark.slow
def test_a_quick_run_exports_and_onnxruntime_gives_its_probabilities(quick_run, mnist, mnist_dir, tmp_path):
    assert_matches_pytorch(load_run(quick_run), tmp_path / "quick.onnx", mnist.test_x[:1000], "quick run")
    result = run_cli("export", quick_run, "--onnx", tmp_path / "cli.onnx", "--check", "1000", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the exporter's own notes are silenced
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'cli.onnx'}: the whole sequence, x (batch, 28, 28)")
    assert lines[1].startswith(f"wrote {tmp_path / 'cli.step.onnx'}: one step, x_t (batch, 28)")
    assert "onnxruntime against PyTorch on 1,000 test images, every step's belief, largest difference" in lines[2]


@pytest.mark.slow
def test_the_seeds_own_model_exports_and_onnxruntime_gives_its_probabilities(
    mnist, mnist_dir, seed_models_dir, tmp_path
):
    import_theano(find_seed_model(28, seed_models_dir), 28, tmp_path / "seed28", data_dir=str(mnist_dir))
    assert_matches_pytorch(load_run(tmp_path / "seed28"), tmp_path / "seed28.onnx", mnist.test_x[:1000], "seed K=28")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cell", "readout", "settings"),
    [
        ("lstm", "mean-logits", {"layers": 2}),
        ("gru", "last", {}),
        ("indrnn", "mean-softmax", {"task": "permuted", "pixels_per_step": 1, "layers": 2}),
        ("lru", "last", {"task": "pixel", "pixels_per_step": 16, "state": 8}),
        ("s4d", "mean-logits", {"layers": 2, "state": 8}),
    ],
)
def test_every_cell_kind_exports(cell, readout, settings, mnist, tmp_path):
    """The gated cells and 784 steps of a permuted task, random weights: the Scan holds any length."""
    config, model = model_of(cell, readout, **settings)
    trained = TrainedModel(Run(tmp_path), config, model, config.task.sequencer())
    assert_matches_pytorch(trained, tmp_path / "m.onnx", mnist.test_x[:200], f"{cell} {readout}")


def test_the_step_form_passes_each_layer_through_its_batch_norm():
    """The IndRNN recipe's batch norm sits between layers: the step form normalises every step's state by
    the running statistics before the next layer reads it, as the whole-sequence definition does."""
    _, model = model_of("indrnn", "last", layers=3, norm="batch", dropout=0.1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(torch.rand(buffer.shape, generator=g) + (0.5 if name.startswith("var") else -0.5))
    assert_steps_are_the_definition(model.double())
