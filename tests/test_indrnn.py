"""The IndRNN's recipe (batch norm, dropout, the bound on w, the top layer near one, the recipe's optimiser
groups, clipping and plateau) and its layer-parallel path, held to the plain autograd definition."""

import dataclasses
import math

import pytest
import torch

from conftest import assert_one_line_error, call_main
from seqmnist import kernels, native
from seqmnist.cells.elementwise import step_loop
from seqmnist.config import Config, RecipeSettings
from seqmnist.errors import SeqmnistError
from seqmnist.model import Draws, ModelSpec, build_model
from seqmnist.recipes import clip_gradients, learning_rate, make_optimizer, plateau_cuts
from seqmnist.runs import load_run


def _indrnn(norm: str = "none", dropout: float = 0.0, bias: bool = True, steps: int = 30) -> torch.nn.Module:
    spec = ModelSpec("indrnn", 3, 12, 3, bias, "last", None, steps, norm=norm, dropout=dropout)
    spec = dataclasses.replace(spec, recurrent_max=5.0, last_layer_init="near-one")
    model = build_model(spec).init_weights(Draws(torch.Generator().manual_seed(4))).double()
    with torch.no_grad():  # the norms away from (1, 0), so their gradients say something
        for name, p in model.named_parameters():
            if name.startswith(("gamma", "beta")):
                p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name)), dtype=p.dtype) - 0.5)
    return model


def test_the_relu_scan_is_the_step_loop_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, generator=g, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    b = (torch.randn(6, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    torch.testing.assert_close(kernels.relu_scan(a, w, b), step_loop(a, w, b), rtol=1e-13, atol=0)
    assert torch.autograd.gradcheck(kernels.relu_scan, (a, w, b))
    assert torch.autograd.gradcheck(lambda a, w: kernels.relu_scan(a, w), (a, w))  # no bias


def test_the_relu_scan_leaves_no_subnormal_float():
    # A state decaying over hundreds of blank steps, a gradient shrinking as far back: both are flushed
    # to zero below 1e-30 rather than reaching float's subnormals (on which the multiplies crawl).
    w = torch.full((16,), 0.9)
    blank_after_one = torch.zeros(2, 800, 16)
    blank_after_one[:, 0] = 1.0
    inked = torch.ones(2, 800, 16, requires_grad=True)
    h = kernels.relu_scan(inked, w)
    g = torch.zeros_like(h)
    g[:, -1] = 1.0
    (da,) = torch.autograd.grad(h, inked, g)
    for t in (kernels.relu_scan(blank_after_one, w), da):
        assert t[t != 0].abs().min().item() >= 1e-30 and (t == 0).any()


@pytest.mark.parametrize(
    "wrong",
    [
        lambda a, w, b: (a.double(), w, b),
        lambda a, w, b: (a[:, :, :5], w, b),
        lambda a, w, b: (a, w, b[:3]),
        lambda a, w, b: (a.transpose(0, 1), w, b),
        lambda a, w, b: (a[0], w, b),
    ],
)
def test_the_relu_scan_checks_its_arguments(wrong):
    a, w, b = torch.rand(2, 5, 8), torch.rand(8), torch.rand(8)
    with pytest.raises(RuntimeError, match="scan"):
        native.native_loops().relu_scan_forward(*wrong(a, w, b))


@pytest.mark.parametrize(
    ("norm", "dropout", "bias"), [("none", 0.0, False), ("batch", 0.0, True), ("batch", 0.2, True)]
)
@pytest.mark.parametrize("training", [True, False])
def test_the_layer_parallel_path_is_the_definition(norm, dropout, bias, training):
    """Values and every gradient in float64, in training (batch statistics, the same dropout masks) and
    in evaluation (running statistics)."""
    model = _indrnn(norm, dropout, bias).train(training)
    x = torch.rand(9, 30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:, :4] = 0  # blank first steps, as MNIST's
    weights = torch.randn(30, 9, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for fast in (False, True):
        torch.default_generator.manual_seed(7)
        logits = model.logits(x, fast=fast)
        results.append([logits, *torch.autograd.grad((logits * weights).sum(), list(model.parameters()))])
    assert model.layer_parallel() == (norm != "none" or dropout > 0)
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_loss_of_the_last_readout_reads_the_last_step_alone():
    model = _indrnn("batch").train()
    x, y = torch.rand(6, 30, 3, dtype=torch.float64), torch.arange(6)
    torch.testing.assert_close(model.loss(x, y), model.readout.loss(model.definition(x), y), rtol=1e-12, atol=0)


def test_the_recipes_bounds_and_initial_weights():
    model = _indrnn()
    limit = 5.0 ** (1 / 30)
    assert model.recurrent_limit == pytest.approx(limit)
    top = model.W3
    assert top.min() >= 1 / limit and top.max() <= limit  # near one
    assert model.W.min() >= 0 and model.W.max() <= 1
    with torch.no_grad():
        model.W2.fill_(3.0)
    model.constrain_()
    assert model.W2.max().item() == pytest.approx(limit)


def test_the_options_are_refused_by_cells_that_do_not_take_them():
    with pytest.raises(SeqmnistError, match="--norm is not for the vanilla cell"):
        build_model(ModelSpec("vanilla", norm="batch"))
    assert_one_line_error(
        call_main("train", "--cell", "lstm", "--dropout", "0.1"), "--dropout is not for the lstm cell"
    )
    assert_one_line_error(
        call_main("train", "--clip-mode", "elementwise"), "--clip-mode: invalid choice: 'elementwise'"
    )


def test_the_optimiser_spares_recurrent_weights_and_biases_from_decay():
    model = _indrnn("batch")
    names = {id(p): n for n, p in model.named_parameters()}
    recipe = RecipeSettings(optimizer="adam", lr=2e-4, weight_decay=1e-4, decay_recurrent=False, decay_biases=False)
    others, recurrent, biases = make_optimizer(model, recipe).param_groups
    assert {names[id(p)] for p in recurrent["params"]} == {"W", "W2", "W3"}
    norms = {f"{kind}{k}" for k in ("", "2", "3") for kind in ("gamma", "beta")}
    assert {names[id(p)] for p in biases["params"]} == {"b", "b2", "b3", "c"} | norms
    assert {names[id(p)] for p in others["params"]} == {"U", "U2", "U3", "V"}
    assert (others["weight_decay"], recurrent["weight_decay"], biases["weight_decay"]) == (1e-4, 0.0, 0.0)


def test_value_clipping_clamps_each_element():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([-30.0, -2.0, 5.0, 12.0])
    clip_gradients([p], 10.0, "value")
    assert p.grad.tolist() == [-10.0, -2.0, 5.0, 10.0]


def test_the_plateau_cuts_after_patience_evaluations_without_a_better_one():
    nan = math.nan
    assert plateau_cuts([0.5, 0.6, 0.6, 0.55], 2) == 1
    assert plateau_cuts([0.5, 0.6, nan, 0.6, 0.7, 0.65], 2) == 0
    assert plateau_cuts([0.5, 0.4, 0.4, 0.4, 0.4], 1) == 4
    assert learning_rate(RecipeSettings(lr=2e-4, schedule="plateau", epochs=6), 500, cuts=2) == pytest.approx(2e-6)


def test_the_preset_is_the_recipe():
    config = Config.from_settings("pixel-indrnn")
    spec = config.model_spec()
    assert (config.task.task, spec.layers, spec.hidden, spec.norm, spec.dropout) == ("pixel", 6, 128, "batch", 0.1)
    assert (config.recipe.clip_mode, config.recipe.schedule, config.recipe.batch_size) == ("value", "plateau", 32)
    assert build_model(spec).training_path(torch.device("cpu")).startswith("one multiply a layer")


@pytest.mark.slow
def test_a_run_with_batch_norm_and_dropout_resumes_as_it_would_have_gone_on(mnist_dir, tmp_path):
    """Running statistics are saved with the weights; the dropout masks are the step's, so a run stopped
    after an epoch and resumed ends with the bits of one that was not stopped (no warm-up: a run's
    warm-up is capped by its planned epochs, which the extension changes); evaluation reads the saved
    running statistics."""
    flags = ["--cell", "indrnn", "--hidden", "16", "--layers", "2", "--norm", "batch", "--dropout", "0.2",
             "--optimizer", "adam", "--lr", "0.003", "--rng", "torch", "--bias", "--readout", "last",
             "--clip", "1", "--clip-mode", "value", "--schedule", "plateau", "--warmup", "0", "--no-decay-biases",
             "--subset", "300", "--batch-size", "50", "--no-eval-train", "--data-dir", mnist_dir]  # fmt: skip
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert call_main("train", *flags, "--epochs", "2", "--out", straight).returncode == 0
    assert call_main("train", *flags, "--epochs", "1", "--out", stopped).returncode == 0
    resumed = call_main("train", "--resume", stopped, "--epochs", "2", "--data-dir", mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    runs = [load_run(path) for path in (straight, stopped)]
    for a, b in zip(*(run.model.state_dict().values() for run in runs), strict=True):
        assert torch.equal(a, b)
    model = runs[0].model
    assert not model.training and not torch.equal(model.var2, torch.ones_like(model.var2))
