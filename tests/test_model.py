"""The model against its equations, and the fast engine against the model."""

import numpy as np
import pytest
import torch

from seqmnist import engine
from seqmnist.model import VanillaRNN, averaged_softmax_nll, rnn_step_probs, seed_code_readout


def numpy_mean_probs(U, W, V, x):
    """The seed's equations, written out in NumPy: s_t = tanh(x_t U + s_{t-1} W), o_t = softmax(s_t V)."""
    s = np.zeros((x.shape[0], W.shape[0]))
    total = 0
    for t in range(x.shape[1]):
        s = np.tanh(x[:, t] @ U + s @ W)
        z = s @ V
        e = np.exp(z - z.max(1, keepdims=True))
        total = total + e / e.sum(1, keepdims=True)
    return total / x.shape[1]


def random_case(batch=7, rows=28, hidden=13, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    model = VanillaRNN(hidden).reset_parameters(seed).to(dtype)
    x = torch.rand(batch, rows, 28, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, x, y


def weights(model):
    return model.U, model.W, model.V


def test_init_is_uniform_in_the_seeds_bounds():
    model = VanillaRNN(200).reset_parameters(12345)
    assert model.U.shape == (28, 200) and model.W.shape == (200, 200) and model.V.shape == (200, 10)
    for p in weights(model):
        bound = 1 / np.sqrt(p.shape[0])
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.95 * bound
        assert abs(p.mean().item()) < 0.1 * bound
    again = VanillaRNN(200).reset_parameters(12345)
    other = VanillaRNN(200).reset_parameters(1)
    assert torch.equal(model.W, again.W) and not torch.equal(model.W, other.W)


@pytest.mark.parametrize("rows", [1, 5, 28])
def test_forward_matches_numpy(rows):
    model, x, _ = random_case(rows=rows)
    expected = numpy_mean_probs(*(p.detach().double().numpy() for p in weights(model)), x.double().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    fast = engine.step_probs(*weights(model), x, chunk=3).mean(0)
    np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_step_probs_are_distributions_per_row():
    model, x, _ = random_case(batch=5, rows=9)
    probs = engine.step_probs(*weights(model), x, chunk=2)
    assert probs.shape == (9, 5, 10)
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs.numpy(), engine.step_probs(*weights(model), x, chunk=5).numpy(), rtol=1e-6)


def test_engine_gradients_match_finite_differences():
    model, x, y = random_case(batch=3, rows=6, hidden=5, dtype=torch.float64)
    params = [p.detach().clone().requires_grad_() for p in weights(model)]
    # gradcheck runs several forward passes before a backward one: a workspace each.
    assert torch.autograd.gradcheck(lambda U, W, V: engine.seed_loss(engine.Workspace(), x, y, U, W, V), params)


def test_reference_gradients_match_finite_differences():
    model, x, y = random_case(batch=3, rows=6, hidden=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda U, W, V: averaged_softmax_nll(rnn_step_probs(U, W, V, x).mean(0), y),
        [p.detach().clone().requires_grad_() for p in weights(model)],
    )


def test_the_compiled_loops_build_here():
    # Without them the fast path still works, on the Python loops, but slower: CI must notice.
    assert engine.native_loops() is not None, "engine.cpp did not build"


def test_without_the_compiled_loops_the_python_ones_run(tmp_path, monkeypatch, capsys):
    # A real build of a broken source, in a scratch cache; __wrapped__ bypasses the in-process cache.
    broken = tmp_path / "engine.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(engine, "NATIVE_SOURCE", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert engine.native_loops.__wrapped__() is None
    notice, warning = capsys.readouterr().err.splitlines()
    assert notice == "seqmnist: compiling the CPU engine (once, about a minute)"
    assert warning.startswith("seqmnist: warning: the CPU engine did not build (")
    assert "error" in warning and warning.endswith("to retry); using the slower Python loops")
    # The failure is remembered: the next process says so in one line instead of building again.
    assert engine.native_loops.__wrapped__() is None
    assert capsys.readouterr().err.splitlines() == [warning]
    # An unwritable cache falls back too, rather than ending in a traceback.
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-dir")
    assert engine.native_loops.__wrapped__() is None
    assert capsys.readouterr().err.startswith("seqmnist: warning: ")
    monkeypatch.setenv("SEQMNIST_NATIVE", "0")
    assert engine.native_loops.__wrapped__() is None
    assert capsys.readouterr().err == ""


def test_the_compiled_loops_honour_inference_mode(threads):
    # Each thread of a parallel region has its own PyTorch settings: the workers must not need the caller's.
    model, x, _ = random_case(batch=200, rows=5, hidden=16)
    with torch.inference_mode():
        probs = engine.step_probs(*weights(model), x)
    with torch.no_grad():
        np.testing.assert_allclose(probs.mean(0).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(params=[1, 2, 3], ids=["1-thread", "2-threads", "3-threads"])
def threads(request):
    """The compiled loops give each thread its own slice of the batch: run on one, two and three slices
    (three split a batch of 100 unevenly)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize(
    ("batch", "rows", "hidden"), [(100, 28, 200), (97, 28, 64), (37, 28, 64), (16, 3, 200), (40, 4, 65), (1, 1, 8)]
)
def test_engine_equals_autograd(batch, rows, hidden, native, threads):
    model, x, y = random_case(batch, rows, hidden, seed=batch)
    ref_loss = averaged_softmax_nll(model(x), y)
    ref_grads = torch.autograd.grad(ref_loss, list(weights(model)))
    ws = engine.Workspace(native=native)
    for _ in range(2):  # the second pass reuses the workspace
        loss = engine.seed_loss(ws, x, y, *weights(model))
        grads = torch.autograd.grad(loss, list(weights(model)))
        assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
        for got, want in zip(grads, ref_grads, strict=True):
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_compiled_loops_read_only_what_they_write(threads):
    # They keep each step's product in cache and write only the logits, and the logits' gradients, to
    # the whole-batch buffers: whatever else those hold must not matter.
    model, x, y = random_case(batch=70, rows=6, hidden=40)
    ws = engine.Workspace()

    def loss_and_grads():
        loss = engine.seed_loss(ws, x, y, *weights(model))
        return [loss.detach(), *torch.autograd.grad(loss, list(weights(model)))]

    want = loss_and_grads()
    ws.fused.fill_(float("nan"))
    ws.grad[..., : ws.logits.start].fill_(float("nan"))
    ws.grad[..., ws.logits.stop :].fill_(float("nan"))
    for got, expected in zip(loss_and_grads(), want, strict=True):
        assert torch.equal(got, expected)


def test_workspace_misuse_is_caught():
    model, x, y = random_case()
    ws = engine.Workspace()
    first = engine.seed_loss(ws, x, y, *weights(model))
    engine.seed_loss(ws, x, y, *weights(model))
    with pytest.raises(RuntimeError, match="workspace"):
        first.backward()


def test_blank_rows_give_exactly_uniform_softmaxes():
    # The seed's ties: an image whose rows read are all blank must tie exactly, so argmax says 0.
    model, x, _ = random_case(batch=6, rows=5)
    x[:3] = 0
    probs = engine.step_probs(*weights(model), x)
    assert torch.equal(probs[:, :3], torch.full_like(probs[:, :3], 0.1))
    assert not torch.equal(probs[:, 3:], torch.full_like(probs[:, 3:], 0.1))


def test_seed_code_readout_counts_the_last_row_as_uniform():
    model, x, _ = random_case(batch=7, rows=6)
    with torch.no_grad():
        probs = rnn_step_probs(*weights(model), x)
        seed = seed_code_readout(probs)
    np.testing.assert_allclose(seed.sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose((seed * 6 - 0.1).numpy(), probs[:5].sum(0).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(seed.argmax(1), probs[:5].sum(0).argmax(1))
    # One row read: the seed's code saw nothing but the uniform softmax, so it always said 0.
    assert torch.equal(seed_code_readout(probs[:1]).argmax(1), torch.zeros(7, dtype=torch.long))
