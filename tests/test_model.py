"""The models against their equations, and every fast path against the plain definitions."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from seqmnist import engine, native
from seqmnist.cells import ElementwiseRNN, GatedRNN, VanillaRNN
from seqmnist.config import RecipeSettings
from seqmnist.errors import SeqmnistError
from seqmnist.model import ENGINE_PATH, Draws, ModelSpec, build_model
from seqmnist.readouts import get_readout, readout_names
from seqmnist.recipes import EngineSGD, make_optimizer, recurrent_names
from seqmnist.registry import cell_names, get_cell
from seqmnist.train import train_step

READOUTS = readout_names()
ELEMENTWISE = [name for name in cell_names() if issubclass(get_cell(name), ElementwiseRNN)]
GATED = [name for name in cell_names() if issubclass(get_cell(name), GatedRNN)]


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


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    """The compiled loops give each thread its own slice of the batch: run on one slice and on three
    (three split a batch of 100 unevenly; two, this machine's default, every other test runs on)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


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
        definition = torch.softmax(model.logits(x, fast=False), dim=-1).mean(0)
    np.testing.assert_allclose(definition.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", cell_names())
def test_definitions_gradients_match_finite_differences(cell):
    state = 2 if get_cell(cell).default_state else None  # a state of its own: small, as hidden
    spec = ModelSpec(cell, inputs=3, hidden=4, layers=2, bias=True, readout="mean-logits", steps=5, state=state)
    model = _perturbed(spec, seed=0).double()
    x, y = torch.rand(3, 5, 3, dtype=torch.float64), torch.tensor([1, 0, 7])
    names = [n for n, _ in model.named_parameters()]

    def loss(*params):
        scores = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))
        return nn.functional.cross_entropy(scores, y)

    assert torch.autograd.gradcheck(loss, [p.detach().clone().requires_grad_() for p in model.parameters()])


def test_the_compiled_loops_build_here():
    # Without them the models still work, on PyTorch's modules, but slower: CI must notice.
    assert native.native_loops() is not None, "engine.cpp did not build"


def test_without_the_compiled_loops_pytorchs_modules_run(tmp_path, monkeypatch, capsys):
    # A real build of a broken source, in a scratch cache; __wrapped__ bypasses the in-process cache.
    broken = tuple(tmp_path / source.name for source in native.SOURCES)  # none compiled in full first: ~70 s
    for source in broken:
        source.write_text(f"{source.name} is not C++\n")
    monkeypatch.setattr(native, "SOURCES", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert native.native_loops.__wrapped__() is None
    notice, warning = capsys.readouterr().err.splitlines()
    assert notice == f"seqmnist: compiling the CPU engine (once, kept in {tmp_path / 'cache' / 'seqmnist' / 'engine'})"
    assert warning.startswith("seqmnist: warning: the CPU engine did not build (")
    assert "error" in warning and warning.endswith("to retry); using PyTorch's own modules (slower)")
    # The failure is remembered: the next process says so in one line instead of building again.
    assert native.native_loops.__wrapped__() is None
    assert capsys.readouterr().err.splitlines() == [warning]
    # An unwritable cache falls back too, rather than ending in a traceback.
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-dir")
    assert native.native_loops.__wrapped__() is None
    assert capsys.readouterr().err.startswith("seqmnist: warning: ")
    monkeypatch.setenv("SEQMNIST_NATIVE", "0")
    assert native.native_loops.__wrapped__() is None
    assert capsys.readouterr().err == ""


def _perturbed(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """A model whose every weight, biases included, is non-trivial (identity inits have zeros)."""
    model = build_model(spec).init_weights(Draws(torch.Generator().manual_seed(seed)))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _reference(model, spec, x, y):
    """Loss, gradients and logits of the plain definition, in float64."""
    exact = build_model(spec).double()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    loss = exact.loss(x.double(), y, fast=False)
    return loss, torch.autograd.grad(loss, list(exact.parameters())), exact.logits(x.double(), fast=False)


@pytest.mark.parametrize(
    ("cell", "readout", "bias", "layers", "shape"),
    [
        *itertools.product(ELEMENTWISE, READOUTS, [False, True], [1, 2], [(6, 28)]),
        *itertools.product(ELEMENTWISE, ["last"], [True], [1, 2], [(40, 1), (7, 16)]),
    ],
)
def test_every_elementwise_fast_path_equals_the_definition(cell, readout, bias, layers, shape, threads):
    steps, inputs = shape
    spec = ModelSpec(cell, inputs, 24, layers, bias, readout, None, steps)
    model = _perturbed(spec, seed=layers)
    g = torch.Generator().manual_seed(steps)
    x, y = torch.rand(100, steps, inputs, generator=g), torch.randint(0, 10, (100,), generator=g)
    want_loss, want_grads, want_logits = _reference(model, spec, x, y)
    for _ in range(2):  # the second pass reuses the workspace
        loss = model.loss(x, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    for got, want in zip(grads, want_grads, strict=True):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    logits = model.logits(x)
    assert (logits - want_logits).abs().max() <= 1e-5 * want_logits.abs().max()


@pytest.mark.parametrize(
    ("batch", "rows", "hidden"), [(97, 28, 64), (37, 28, 64), (16, 3, 200), (40, 4, 65), (1, 1, 8)]
)
def test_the_seeds_fast_path_at_odd_shapes(batch, rows, hidden, threads):
    model, x, y = random_case(batch, rows, hidden, seed=batch)
    ref_loss = model.loss(x, y, fast=False)
    ref_grads = torch.autograd.grad(ref_loss, list(weights(model)))
    loss = model.loss(x, y)
    grads = torch.autograd.grad(loss, list(weights(model)))
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    for got, want in zip(grads, ref_grads, strict=True):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("layers", [1, 2])
def test_gated_cells_fused_modules_equal_the_definition(cell, layers):
    spec = ModelSpec(cell, 5, 12, layers, True, "mean-logits", "orthogonal", 9)
    model = _perturbed(spec, seed=3)
    x, y = torch.rand(20, 9, 5), torch.randint(0, 10, (20,))
    want_loss, want_grads, want_logits = _reference(model, spec, x, y)
    loss = model.loss(x, y)
    assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    for got, want in zip(torch.autograd.grad(loss, list(model.parameters())), want_grads, strict=True):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (model.logits(x) - want_logits).abs().max() <= 1e-5 * want_logits.abs().max()


@pytest.mark.parametrize("cell", [name for name in ELEMENTWISE if not get_cell(name).diagonal])
def test_pytorchs_nn_rnn_path_equals_the_definition(cell):
    # The path a model takes where the engine cannot run (a GPU, no compiler): nn.RNN with our weights.
    spec = ModelSpec(cell, 4, 10, 2, True, "last", None, 6)
    model = _perturbed(spec, seed=5)
    x = torch.rand(8, 6, 4)
    torch.testing.assert_close(model.torch_logits(x), model.logits(x, fast=False), rtol=1e-5, atol=1e-6)


def test_vanilla_rnn_converts_to_and_from_torch_nn_rnn():
    model, x, _ = random_case(batch=9, rows=28, hidden=16)
    rnn, linear = model.to_torch()
    assert isinstance(rnn, nn.RNN) and rnn.bias is False and rnn.batch_first
    torch.testing.assert_close(rnn.weight_ih_l0, model.U.T)
    states, _ = rnn(x)
    scores = torch.softmax(linear(states), dim=-1).mean(1)
    with torch.no_grad():
        torch.testing.assert_close(scores, model(x), rtol=1e-5, atol=1e-6)
    back = ElementwiseRNN.from_torch(rnn, linear)
    for name in "UWV":
        assert torch.equal(getattr(back, name), getattr(model, name))
    biased = nn.RNN(28, 8, 2, bias=True, batch_first=True)
    converted = ElementwiseRNN.from_torch(biased, nn.Linear(8, 10), readout="last")
    torch.testing.assert_close(converted.b, biased.bias_ih_l0 + biased.bias_hh_l0)
    with pytest.raises(SeqmnistError, match="indrnn has no PyTorch module"):
        build_model(ModelSpec("indrnn")).to_torch()


def test_initialisations():
    draws = Draws(torch.Generator().manual_seed(0))
    irnn = build_model(ModelSpec("irnn", hidden=16, bias=True)).init_weights(draws)
    assert torch.equal(irnn.W, torch.eye(16)) and torch.equal(irnn.b, torch.zeros(16))
    assert irnn.U.std().item() == pytest.approx(0.001, rel=0.2)
    ortho = build_model(ModelSpec("vanilla", hidden=16, init="orthogonal")).init_weights(draws)
    torch.testing.assert_close(ortho.W @ ortho.W.T, torch.eye(16), atol=1e-5, rtol=0)
    ind = build_model(ModelSpec("indrnn", hidden=16, steps=784)).init_weights(draws)
    assert ind.W.shape == (16,) and ind.W.min() >= 0 and ind.W.max() <= 1
    with torch.no_grad():
        ind.W.fill_(3.0)
    ind.constrain_()
    assert ind.W.max().item() == pytest.approx(2 ** (1 / 784))
    lstm = build_model(ModelSpec("lstm", hidden=8, init="orthogonal")).init_weights(draws)
    for gate in lstm.rnn.weight_hh_l0.chunk(4):
        torch.testing.assert_close(gate @ gate.T, torch.eye(8), atol=1e-5, rtol=0)


def test_readouts_and_their_running_probabilities():
    logits = torch.randn(6, 4, 10)
    for readout in map(get_readout, READOUTS):
        running = readout.running(logits)
        assert running.shape == logits.shape
        torch.testing.assert_close(running.sum(-1), torch.ones(6, 4))
        assert torch.equal(running[-1].argmax(1), readout.scores(logits).argmax(1))
        if readout.running_is_step_softmax:
            torch.testing.assert_close(running[2], torch.softmax(logits[2], -1))


def test_blank_rows_give_exactly_uniform_softmaxes():
    # The seed's ties: an image whose rows read are all blank must tie exactly, so argmax says 0.
    model, x, _ = random_case(batch=6, rows=5)
    x[:3] = 0
    probs = torch.softmax(model.logits(x), dim=-1)
    assert torch.equal(probs[:, :3], torch.full_like(probs[:, :3], 0.1))
    assert not torch.equal(probs[:, 3:], torch.full_like(probs[:, 3:], 0.1))


def test_the_compiled_loops_honour_inference_mode(threads):
    # Each thread of a parallel region has its own PyTorch settings: the workers must not need the caller's.
    model, x, _ = random_case(batch=200, rows=5, hidden=16)
    with torch.inference_mode():
        probs = torch.softmax(model.logits(x), -1)
    with torch.no_grad():
        definition = torch.softmax(model.logits(x, fast=False), -1).mean(0)
    np.testing.assert_allclose(probs.mean(0).numpy(), definition.numpy(), rtol=1e-5, atol=1e-6)


def test_the_compiled_loops_read_only_what_they_write(threads):
    # They keep each step's product in cache and write only the states, the logits and the logits'
    # gradients to whole-batch buffers: what the logits' buffers held before must not matter (the
    # gradients of step 0's logits, which count for no readout, are the zeros no pass writes).
    model, x, y = random_case(batch=70, rows=6, hidden=40)
    x[::3, :2] = 0  # and a third of the images start blank: the rows the loops leave out

    def loss_and_grads():
        loss = model.loss(x, y)
        return [loss.detach(), *torch.autograd.grad(loss, list(weights(model)))]

    want = loss_and_grads()
    ws = model.workspaces.get()
    ws.z.fill_(float("nan"))
    ws.grad[1:].fill_(float("nan"))
    for got, expected in zip(loss_and_grads(), want, strict=True):
        assert torch.equal(got, expected)


def _blank_led(batch: int, steps: int, inputs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose first 0..steps steps are blank (all of them, for some), sparse after, as MNIST's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, steps, inputs, generator=g)
    first = torch.randint(0, steps + 1, (batch,), generator=g)
    x[torch.arange(steps)[None, :] < first[:, None]] = 0
    x[x < 0.3] = 0
    return x, torch.randint(0, 10, (batch,), generator=g)


def test_first_inked_steps():
    x = torch.zeros(4, 5, 3)
    x[0, 0, 2], x[1, 3, 0], x[2, 4, 1] = 1.0, -0.5, 1e-30
    assert native.native_loops().first_inked_steps(x).tolist() == [0, 3, 4, 5]
    assert native.native_loops().first_inked_steps(x[:, :3]).tolist() == [0, 3, 3, 3]


@pytest.mark.parametrize(
    ("cell", "readout", "layers", "shape"),
    [
        *itertools.product(ELEMENTWISE, READOUTS, [1, 2], [(100, 28, 28)]),
        # 300 rows a slice on one thread: the backward pass computes them all (kMaxExactSumRows).
        *itertools.product(["vanilla", "indrnn"], ["mean-softmax"], [1, 2], [(7, 28, 28), (300, 60, 1)]),
    ],
)
def test_leaving_out_blank_steps_changes_no_bit(cell, readout, layers, shape, threads):
    # The engine skips each image's steps before its first ink (engine.cpp's ActiveRows): the loss,
    # every gradient and the logits must be the bits it computes without skipping.
    batch, steps, inputs = shape
    spec = ModelSpec(cell, inputs, 200 if batch == 100 else 24, layers, False, readout, None, steps)
    model = _perturbed(spec, seed=layers)
    x, y = _blank_led(batch, steps, inputs, seed=steps)
    results = []
    for skip in (False, True):
        model.workspaces = engine.Workspaces(skip_blank=skip)
        loss = model.loss(x, y)
        results.append([loss.detach(), *torch.autograd.grad(loss, list(model.parameters())), model.logits(x)])
    for without, with_skips in zip(*results, strict=True):
        assert torch.equal(without, with_skips)


@pytest.mark.parametrize(
    ("cell", "readout", "bias", "layers"), list(itertools.product(ELEMENTWISE, READOUTS, [False, True], [1, 2]))
)
def test_the_fused_sgd_step_is_autograd_and_torch_sgd_bit_for_bit(cell, readout, bias, layers):
    # EngineSGD steps on the engine's own pass (no autograd, no optimiser machinery): the losses and
    # every weight after a few steps at changing rates must be the bits of autograd and torch.optim.SGD.
    spec = ModelSpec(cell, 28, 40, layers, bias, readout, None, 28)
    fused, long_way = (build_model(spec).init_weights(Draws(torch.Generator().manual_seed(1))) for _ in "ab")
    optimizers = [make_optimizer(fused, RecipeSettings(lr=0.1), own_step=True), torch.optim.SGD(long_way.parameters())]
    assert isinstance(optimizers[0], EngineSGD)
    for step, lr in enumerate([0.01, 0.04, 0.02]):
        x, y = _blank_led(100, 28, 28, seed=step)
        for optimizer in optimizers:
            optimizer.param_groups[0]["lr"] = lr
        got = train_step(fused, optimizers[0], x, y)
        want = long_way.loss(x, y)
        optimizers[1].zero_grad(set_to_none=True)
        want.backward()
        optimizers[1].step()
        for model in (fused, long_way):
            model.constrain_()
        assert torch.equal(got, want.detach())
    assert all(p.grad is None for p in fused.parameters())  # the fused step was the one taken
    for a, b in zip(fused.parameters(), long_way.parameters(), strict=True):
        assert torch.equal(a, b)


def test_only_plain_sgd_takes_the_fused_step():
    model = VanillaRNN(8)
    assert type(make_optimizer(model, RecipeSettings(lr=0.1), own_step=True)) is EngineSGD
    assert type(make_optimizer(model, RecipeSettings(lr=0.1))) is torch.optim.SGD  # autograd path or clipping
    decayed = RecipeSettings(lr=0.1, weight_decay=1e-4)
    assert type(make_optimizer(model, decayed, own_step=True)) is torch.optim.SGD
    assert type(make_optimizer(model.double(), RecipeSettings(lr=0.1), own_step=True)) is torch.optim.SGD
    lstm = build_model(ModelSpec("lstm", hidden=8))
    assert type(make_optimizer(lstm, RecipeSettings(lr=0.1), own_step=True)) is torch.optim.SGD
    for name in ("momentum", "nesterov", "adam", "adamw", "rmsprop"):
        assert not isinstance(make_optimizer(model, RecipeSettings(optimizer=name, lr=0.1), own_step=True), EngineSGD)
    with pytest.raises(SeqmnistError, match="--optimizer must be one of sgd, .* \\(got 'adagrad'\\)"):
        make_optimizer(model, RecipeSettings(optimizer="adagrad", lr=0.1))


@pytest.mark.parametrize(("cell", "readout"), list(itertools.product(ELEMENTWISE, READOUTS)))
def test_the_fast_forward_is_differentiable_like_the_definition(cell, readout):
    # model(x) takes the engine where training does; its gradient comes from the engine's backward pass.
    spec = ModelSpec(cell, 7, 16, 2, True, readout, None, 9)
    model = _perturbed(spec, seed=2)
    x, w = torch.rand(40, 9, 7), torch.randn(40, 10)
    assert model.training_path(x.device, dtype=x.dtype) == ENGINE_PATH
    want = torch.autograd.grad((model.readout.scores(model.logits(x, fast=False)) * w).sum(), list(model.parameters()))
    got = torch.autograd.grad((model(x) * w).sum(), list(model.parameters()))
    for g, expected in zip(got, want, strict=True):
        assert (g - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_workspace_misuse_is_caught():
    model, x, y = random_case()
    first = model.loss(x, y)
    model.loss(x, y)
    with pytest.raises(RuntimeError, match="workspace"):
        first.backward()


@pytest.mark.parametrize("cell", ["indrnn", "lstm"])
def test_recurrent_weights_take_their_own_rate_and_decay(cell):
    """recurrent_lr and decay_recurrent split the recurrent weights into a group of their own; at their
    defaults the optimiser keeps the one group every run had."""
    model = build_model(ModelSpec(cell, 1, 8, 2, True, "last", None, 16))
    (one,) = make_optimizer(model, RecipeSettings(optimizer="adamw", lr=1e-3, weight_decay=0.01)).param_groups
    assert len(one["params"]) == len(list(model.parameters()))
    recipe = RecipeSettings(optimizer="adamw", lr=1e-3, weight_decay=0.01, recurrent_lr=0.1, decay_recurrent=False)
    others, recurrent = make_optimizer(model, recipe).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in recurrent["params"]} == recurrent_names(model) != set()
    assert not {names[id(p)] for p in others["params"]} & recurrent_names(model)
    assert (recurrent["lr_scale"], recurrent["weight_decay"], others["weight_decay"]) == (0.1, 0.0, 0.01)
