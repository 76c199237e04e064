"""The linear recurrent cells (seqmnist.linear): their three forms agree, the compiled scan is right."""

import re

import pytest
import torch

from seqmnist import engine
from seqmnist.linear import LRU, S4D, compiled_scan, log_depth_scan
from seqmnist.model import Draws, ModelSpec, readout_loss, readout_scores
from seqmnist.sequence import Sequencer

CELLS = (LRU, S4D)
needs_engine = pytest.mark.skipif(engine.native_loops() is None, reason="engine.cpp did not build")


def small_model(cell, bias=True, layers=2, seed=0, dtype=torch.float64):
    spec = ModelSpec("linear", inputs=3, hidden=8, layers=layers, bias=bias, readout="last", steps=37)
    return cell(spec, state=6).init_weights(Draws(torch.Generator().manual_seed(seed))).to(dtype)


def stepped_logits(model, x):
    """Per-step logits (steps, batch, classes) by the recurrent mode, one input at a time."""
    state, logits = model.initial_state(len(x)), []
    for x_t in x.unbind(1):
        state, z = model.step(state, x_t)
        logits.append(z)
    return torch.stack(logits)


def gradients(model, x, y, fast):
    model.zero_grad()
    for readout in ("last", "mean-logits"):
        readout_loss(readout, model.logits(x, fast), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_the_parallel_form_equals_the_definition_in_values_and_gradients(cell, bias):
    model = small_model(cell, bias)
    x, y = torch.randn(5, 37, 3, dtype=torch.float64), torch.randint(0, 10, (5,))
    torch.testing.assert_close(model.logits(x), model.logits(x, fast=False), rtol=0, atol=1e-12)
    fast, reference = gradients(model, x, y, True), gradients(model, x, y, False)
    assert fast.keys() == reference.keys() and all(g.abs().sum() > 0 for g in reference.values())
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_the_recurrent_mode_equals_the_parallel_form(cell):
    model = small_model(cell, layers=3, seed=1)
    x = torch.randn(4, 37, 3, dtype=torch.float64)
    torch.testing.assert_close(stepped_logits(model, x), model.logits(x), rtol=0, atol=1e-12)


def test_without_the_engine_the_lru_takes_the_log_depth_scan(monkeypatch):
    model = small_model(LRU)
    x = torch.randn(3, 37, 3, dtype=torch.float64)
    expected = model.logits(x, fast=False)
    monkeypatch.setattr(engine, "native_loops", lambda: None)
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
    assert torch.autograd.gradcheck(compiled_scan, (x, lam), fast_mode=True)
    torch.testing.assert_close(compiled_scan(x, lam), log_depth_scan(x, lam), rtol=0, atol=1e-12)


@needs_engine
@pytest.mark.parametrize("threads", [1, 3])
def test_the_compiled_scan_in_float32_at_the_pixel_tasks_length(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, lam = torch.randn(7, 784, 2 * 40), torch.stack((torch.full((40,), 0.99), torch.full((40,), 0.05)))
        g = torch.randn(7, 784, 80)
        x64, lam64 = x.double().requires_grad_(), lam.double().requires_grad_()
        x32, lam32 = x.clone().requires_grad_(), lam.clone().requires_grad_()
        (compiled_scan(x32, lam32) * g).sum().backward()
        (log_depth_scan(x64, lam64) * g.double()).sum().backward()
        torch.testing.assert_close(compiled_scan(x, lam).double(), log_depth_scan(x64, lam64), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(lam32.grad.double(), lam64.grad, rtol=1e-4, atol=1e-2)
    finally:
        torch.set_num_threads(before)


@needs_engine
def test_the_compiled_scan_checks_its_arguments():
    native = engine.native_loops()
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
            native.scan_forward(*arguments)
    with pytest.raises(RuntimeError, match="g must be shaped"):
        native.scan_backward(torch.randn(2, 4, 8), x, lam)


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_weights_are_drawn_from_the_generator(cell):
    one, two, other = (small_model(cell, seed=seed, dtype=torch.float32) for seed in (3, 3, 4))
    for (name, a), b in zip(one.named_parameters(), two.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(one.parameters(), other.parameters(), strict=True))
    assert set(cell.readouts) == {"last", "mean-logits"} and cell.inits and cell.state == 64 and cell.about
    assert all(any(name.endswith(f".{leaf}") for name, _ in one.named_parameters()) for leaf in cell.ssm_parameters)
    U, decays, V = one.first_layer_weights()
    assert U.shape == (3, 8) and V.shape == (8, 10) and 0 < decays.min() <= decays.max() < 1


def test_the_lrus_eigenvalues_start_on_the_papers_ring():
    mixer = small_model(LRU).blocks[0].mixer
    modulus = mixer.eigenvalues().norm(dim=0)
    assert mixer.r_min <= modulus.min() and modulus.max() <= mixer.r_max
    torch.testing.assert_close(torch.exp(mixer.gamma_log), torch.sqrt(1 - modulus**2))


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.__name__)
def test_on_the_pixel_task_the_recurrent_mode_predicts_as_the_parallel_form(cell, mnist):
    """The issue's check: the first 1,000 test images read pixel by pixel, float32, random weights."""
    spec = ModelSpec("linear", inputs=1, hidden=32, layers=2, bias=True, readout="last", steps=784)
    model = cell(spec, state=32).init_weights(Draws(torch.Generator().manual_seed(0)))
    x = Sequencer("pixel", pixels_per_step=1).encode(mnist.test_x[:1000])
    with torch.no_grad():
        parallel = torch.cat([model.logits(chunk) for chunk in x.split(250)], dim=1)
        stepped = stepped_logits(model, x)
    for readout in cell.readouts:
        fast, slow = (torch.softmax(readout_scores(readout, z), dim=-1) for z in (parallel, stepped))
        assert torch.equal(fast.argmax(1), slow.argmax(1)), readout
        assert (fast - slow).abs().max() < 1e-5, readout
