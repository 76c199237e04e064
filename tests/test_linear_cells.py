"""The linear recurrent cells (seqmnist.cells.linear): their forms agree, the compiled scan is right, and
they run through the same commands as every cell."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, call_main
from seqmnist import kernels, load_run, native
from seqmnist.cells import LRU, S4D
from seqmnist.cells.linear import log_depth_scan
from seqmnist.config import Config, RecipeSettings
from seqmnist.kernels import complex_scan
from seqmnist.model import Draws, ModelSpec, build_model
from seqmnist.readouts import get_readout
from seqmnist.recipes import make_optimizer, recurrent_names
from seqmnist.sequence import Sequencer
from seqmnist.train import initial_model

CELLS = ("lru", "s4d")
needs_engine = pytest.mark.skipif(native.native_loops() is None, reason="engine.cpp did not build")


def small_model(cell, bias=True, layers=2, seed=0, dtype=torch.float64, **spec):
    spec = ModelSpec(cell, **{"inputs": 3, "hidden": 8, "layers": layers, "bias": bias, "readout": "last",
                              "steps": 37, "state": 6, **spec})  # fmt: skip
    return build_model(spec).init_weights(Draws(torch.Generator().manual_seed(seed))).to(dtype)


def gradients(model, x, y, logits):
    model.zero_grad()
    for readout in map(get_readout, ("last", "mean-logits")):
        readout.loss(logits(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_the_parallel_forms_equal_the_definition_in_values_and_gradients(cell, bias):
    model = small_model(cell, bias)
    x, y = torch.randn(5, 37, 3, dtype=torch.float64), torch.randint(0, 10, (5,))
    reference = gradients(model, x, y, model.definition)
    assert all(g.abs().sum() > 0 for g in reference.values())
    for logits in (model.logits, model.plain_forms()["plain parallel"]):
        torch.testing.assert_close(logits(x), model.definition(x), rtol=0, atol=1e-12)
        got = gradients(model, x, y, logits)
        for name in reference:
            torch.testing.assert_close(got[name], reference[name], rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_with_dropout_every_form_draws_the_same_masks_and_evaluation_draws_none(cell):
    """S4's tied dropout after each layer's GELU: in training the compiled and plain forms are the definition
    under the same draws, one mask per sequence; in evaluation the model is the one without dropout."""
    model, plain = small_model(cell, dropout=0.3).train(), small_model(cell)
    x, y = torch.randn(5, 37, 3, dtype=torch.float64), torch.randint(0, 10, (5,))

    def drawn(logits):
        return lambda x: torch.default_generator.manual_seed(7) and logits(x)

    reference = gradients(model, x, y, drawn(model.definition))
    for logits in (model.logits, model.plain_forms()["plain parallel"]):
        torch.testing.assert_close(drawn(logits)(x), drawn(model.definition)(x), rtol=0, atol=1e-12)
        got = gradients(model, x, y, drawn(logits))
        for name in reference:
            torch.testing.assert_close(got[name], reference[name], rtol=0, atol=1e-11, msg=name)
    assert not torch.allclose(drawn(model.logits)(x), plain.logits(x))
    model.eval()
    torch.testing.assert_close(model.logits(x), plain.logits(x), rtol=0, atol=0)
    torch.testing.assert_close(model.stepped_logits(x), model.logits(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_the_recurrent_mode_equals_the_parallel_form(cell):
    model = small_model(cell, layers=3, seed=1)
    x = torch.randn(4, 37, 3, dtype=torch.float64)
    torch.testing.assert_close(model.stepped_logits(x), model.logits(x), rtol=0, atol=1e-12)


def test_without_the_engine_the_lru_takes_the_log_depth_scan(monkeypatch):
    model = small_model("lru")
    x = torch.randn(3, 37, 3, dtype=torch.float64)
    expected = model.logits(x, fast=False)
    monkeypatch.setenv("SEQMNIST_NATIVE", "0")  # as a machine without a compiler: native_loops() is None
    monkeypatch.setattr(native, "native_loops", native.native_loops.__wrapped__)  # uncached: reads the setting
    assert model.training_path(torch.device("cpu")) == "PyTorch's log-depth scan"
    torch.testing.assert_close(model.logits(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 100])
def test_the_log_depth_scan_is_the_recurrence(steps):
    x, lam = torch.randn(2, steps, 10, dtype=torch.float64), torch.rand(2, 5, dtype=torch.float64) - 0.5
    h, expected = torch.zeros(2, 5, dtype=torch.complex128), []
    for x_t in x.unbind(1):
        h = torch.complex(lam[0], lam[1]) * h + torch.complex(x_t[:, :5], x_t[:, 5:])
        expected.append(torch.cat((h.real, h.imag), dim=1))
    torch.testing.assert_close(log_depth_scan(x, lam), torch.stack(expected, dim=1), rtol=0, atol=1e-12)


@needs_engine
@pytest.mark.parametrize("state", [1, 5, 16, 37])  # blocks of 16 states: fewer, exactly one, a partial last one
def test_the_compiled_scan_passes_gradcheck(state):
    x = torch.randn(2, 6, 2 * state, dtype=torch.float64, requires_grad=True)
    lam = (0.9 * torch.rand(2, state, dtype=torch.float64) - 0.45).requires_grad_()
    assert torch.autograd.gradcheck(complex_scan, (x, lam), fast_mode=True)
    torch.testing.assert_close(complex_scan(x, lam), log_depth_scan(x, lam), rtol=0, atol=1e-12)


@needs_engine
@pytest.mark.parametrize("threads", [1, 3])
def test_the_compiled_scan_in_float32_at_the_pixel_tasks_length(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = torch.Generator().manual_seed(threads)
        x, lam = (
            torch.randn(7, 784, 2 * 40, generator=rng),
            torch.stack((torch.full((40,), 0.99), torch.full((40,), 0.05))),
        )
        g = torch.randn(7, 784, 80, generator=rng)
        x64, lam64 = x.double().requires_grad_(), lam.double().requires_grad_()
        x32, lam32 = x.clone().requires_grad_(), lam.clone().requires_grad_()
        (complex_scan(x32, lam32) * g).sum().backward()
        (log_depth_scan(x64, lam64) * g.double()).sum().backward()
        torch.testing.assert_close(complex_scan(x, lam).double(), log_depth_scan(x64, lam64), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-4)
        # lambda's gradient sums 5,488 float32 products that partly cancel: its error is float32's, measured
        # against the largest component rather than each (a near-cancelled one has a large relative error)
        assert (lam32.grad.double() - lam64.grad).abs().max() <= 1e-5 * lam64.grad.abs().max()
    finally:
        torch.set_num_threads(before)


def plain_skip(m, v, D):
    return torch.nn.functional.gelu(m + v * D)


def plain_gate(u, z, b):
    return u + torch.nn.functional.glu(z + b, dim=-1)


def gate_arguments(rows, width, dtype=torch.float64, seed=0):
    """(m, v, D) for the skip and (u, z, b) for the gate, each requiring its gradient."""
    rng = torch.Generator().manual_seed(seed)
    shapes = ((rows, width), (rows, width), (width,)), ((rows, width), (rows, 2 * width), (2 * width,))
    return [[torch.randn(shape, generator=rng, dtype=dtype).requires_grad_() for shape in op] for op in shapes]


@needs_engine
@pytest.mark.parametrize("width", [1, 5, 8, 13, 64])  # ATen's vectors hold 4 doubles or 8 floats: partial ones too
def test_the_compiled_skip_and_gate_pass_gradcheck(width):
    ops = ((kernels.skip, plain_skip), (kernels.gate, plain_gate))
    for (op, plain), arguments in zip(ops, gate_arguments(9, width), strict=True):
        assert torch.autograd.gradcheck(op, arguments)
        torch.testing.assert_close(op(*arguments), plain(*arguments), rtol=0, atol=1e-14)


@needs_engine
def test_the_compiled_skip_and_gate_in_float32_at_a_pixel_batch_and_any_thread_count():
    # 3,000 rows: column sums over three chunks of rows, the last one partial
    ops = ((kernels.skip, plain_skip), (kernels.gate, plain_gate))
    for (op, plain), arguments in zip(ops, gate_arguments(3000, 64, torch.float32), strict=True):
        g, exact = torch.randn(3000, 64), [a.detach().double().requires_grad_() for a in arguments]
        reference = torch.autograd.grad(plain(*exact), exact, g.double())
        before, grads = torch.get_num_threads(), []
        try:
            for threads in (1, 3):
                torch.set_num_threads(threads)
                out = op(*arguments)
                torch.testing.assert_close(out.double(), plain(*exact), rtol=1e-6, atol=1e-6)
                grads.append(torch.autograd.grad(out, arguments, g))
        finally:
            torch.set_num_threads(before)
        for one, three, expected in zip(*grads, reference, strict=True):
            assert torch.equal(one, three)  # the same bits whatever the thread count
            torch.testing.assert_close(one.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@needs_engine
def test_the_compiled_skip_and_gate_check_their_arguments():
    library = native.native_loops()
    m, D, z, b = torch.randn(4, 8), torch.randn(8), torch.randn(4, 16), torch.randn(16)
    wrong = {
        library.skip_forward: {
            "float32 or float64, not Int": (m.int(), m.int(), D.int()),
            "D must be Float, not Double": (m, m, D.double()),
            "v must be contiguous": (m, m.t().contiguous().t(), D),
            "do not make (rows, H), (rows, H), (H)": (m, m[:3], D),
            "m and v must be (rows, H), D (H)": (m[0], m[0], D),
        },
        library.gate_forward: {
            "z must be on the CPU": (m, z.to("meta"), b),
            "do not make (rows, H), (rows, 2H), (2H)": (m, z[:, :15].contiguous(), b),
            "b must be contiguous": (m, z, torch.randn(16, 2)[:, 0]),
        },
    }
    for function, cases in wrong.items():
        for message, arguments in cases.items():
            with pytest.raises(RuntimeError, match=re.escape(message)):
                function(*arguments)
    with pytest.raises(RuntimeError, match=re.escape("do not make (rows, H), (rows, H), (H)")):
        library.skip_backward(torch.randn(3, 8), m, m, D)


@needs_engine
def test_the_compiled_scan_checks_its_arguments():
    library = native.native_loops()
    x, lam = torch.randn(2, 5, 8), torch.randn(2, 4)
    wrong = {
        "must be float32 or float64": (x.int(), lam),
        "lambda must be Float, not Double": (x, lam.double()),
        "must have 3 dimensions": (x[0], lam),
        "must be (2, N)": (x, torch.randn(3, 4)),
        "must hold 2N = 6": (x, torch.randn(2, 3)),
        "x must be contiguous": (x.transpose(0, 1), lam),
    }
    for message, arguments in wrong.items():
        with pytest.raises(RuntimeError, match=re.escape(message)):
            library.scan_forward(*arguments)
    with pytest.raises(RuntimeError, match="g must be shaped"):
        library.scan_backward(torch.randn(2, 4, 8), x, lam)


@pytest.mark.parametrize("cell", CELLS)
def test_weights_are_drawn_from_the_generator(cell):
    one, two, other = (small_model(cell, seed=seed, dtype=torch.float32) for seed in (3, 3, 4))
    for (name, a), b in zip(one.named_parameters(), two.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(one.parameters(), other.parameters(), strict=True))
    poles = one.recurrence_eigenvalues()
    assert len(poles) == one.spec.layers and all(0 < abs(p).min() <= abs(p).max() < 1 for p in poles)
    assert all(np.iscomplexobj(p) and np.abs(p.imag).max() > 0 for p in poles)  # oscillating states


def test_the_lrus_eigenvalues_start_on_the_papers_ring():
    mixer = small_model("lru").blocks[0].mixer
    modulus = mixer.eigenvalues().norm(dim=0)
    assert mixer.r_min <= modulus.min() and modulus.max() <= mixer.r_max
    torch.testing.assert_close(torch.exp(mixer.gamma_log), torch.sqrt(1 - modulus**2))


@pytest.mark.parametrize(("cell", "recurrent"), [("lru", {"nu_log", "theta_log", "gamma_log"}),
                                                 ("s4d", {"log_dt", "log_A_real", "A_imag"})])  # fmt: skip
def test_the_recurrences_own_parameters_take_their_own_rate_and_no_decay(cell, recurrent):
    """S4's recipe (its example.py): A and dt learn at a lower rate, without weight decay; B, C, D and the
    position-wise layers as the rest."""
    model = small_model(cell, layers=3, dtype=torch.float32)
    assert {name.rsplit(".", 1)[1] for name in recurrent_names(model)} == recurrent
    assert len(recurrent_names(model)) == 3 * len(recurrent)
    recipe = RecipeSettings(optimizer="adamw", lr=3e-3, weight_decay=0.01, recurrent_lr=0.1, decay_recurrent=False)
    others, own = make_optimizer(model, recipe).param_groups
    assert (own["lr_scale"], own["weight_decay"], others["weight_decay"]) == (0.1, 0.0, 0.01)
    assert len(own["params"]) == 9 and len(others["params"]) == len(list(model.parameters())) - 9


def test_the_state_size_is_the_cells_own_setting():
    assert small_model("lru", state=10).blocks[0].mixer.nu_log.shape == (10,)
    s4d = build_model(ModelSpec("s4d", hidden=8, readout="last"))
    assert s4d.blocks[0].mixer.A_imag.shape == (8, S4D.default_state // 2)
    assert LRU.default_state == S4D.default_state == 64


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cell", "lru", "--readout", "mean-softmax"], "--readout mean-softmax is not for the lru cell"),
        (["--cell", "s4d", "--state", "2000"], "--state must be an integer in 2..1024 (got 2000)"),
        (["--cell", "s4d", "--readout", "last", "--state", "33"], "--state 33: the s4d cell keeps N/2 complex states"),
        (["--cell", "vanilla", "--state", "32"], "--state is not for the vanilla cell"),
        (["--cell", "lru", "--init", "identity"], "--init identity is not for the lru cell (it takes ring)"),
    ],
)
def test_settings_the_cells_do_not_take_end_in_one_line(flags, message):
    assert_one_line_error(call_main("train", "--task", "pixel", *flags), message)


@pytest.fixture
def one_thread():
    """784 steps of tensors this small run 10-20x slower on two threads than on one while the machine
    is busy (each step's parallel regions wait for a descheduled thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_on_the_pixel_task_the_recurrent_mode_predicts_as_the_parallel_form(cell, mnist, one_thread):
    """The issue's check: the first 1,000 test images read pixel by pixel, float32, random weights."""
    spec = ModelSpec(cell, inputs=1, hidden=8, layers=2, bias=True, readout="last", steps=784, state=8)
    model = build_model(spec).init_weights(Draws(torch.Generator().manual_seed(0)))
    x = Sequencer("pixel", pixels_per_step=1).encode(mnist.test_x[:1000])
    with torch.no_grad():
        parallel = model.logits(x)
        stepped = model.stepped_logits(x)
    for readout in map(get_readout, model.readouts):
        fast, slow = (torch.softmax(readout.scores(z), dim=-1) for z in (parallel, stepped))
        assert torch.equal(fast.argmax(1), slow.argmax(1)), readout.name
        assert (fast - slow).abs().max() < 1e-5, readout.name


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_a_tiny_model_trains_evaluates_predicts_and_plots_on_the_pixel_task(cell, mnist, mnist_dir, tmp_path):
    """predict's trace and the row-by-row figures read every step's logits from the parallel form."""
    out = tmp_path / "run"
    trained = call_main("train", "--task", "pixel", "--cell", cell, "--hidden", "8", "--state", "4", "--layers", "1",
                        "--no-bias", "--readout", "mean-logits", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1",
                        "--subset", "200", "--no-eval-train", "--out", out, "--data-dir", mnist_dir)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert f"{cell} 8 (no bias, state 4)" in trained.stdout
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_x[0].numpy()).save(image)
    predicted = call_main("predict", out, image, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout.splitlines()[0])["label"] in range(10)
    plotted = call_main("plot", out, "--data-dir", mnist_dir)
    assert plotted.returncode == 0, plotted.stderr
    drawn = {p.name for p in (out / "figures").iterdir()}
    assert {"recurrence.png", "epoch_curves.png"} <= drawn and "weights.png" not in drawn  # no 1-pixel strips
    start, end = (model.recurrence_eigenvalues() for model in (initial_model(Config.from_file(out / "config.json"))[0],
                                                                 load_run(out).model))  # fmt: skip
    assert len(start) == len(end) == 1 and not np.allclose(start[0], end[0])  # the figure's two sets: they moved
