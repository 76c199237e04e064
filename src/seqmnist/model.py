"""Recurrent classifiers of sequences: the cells and readouts of the sequential-MNIST literature.

Every model reads a sequence x (batch, steps, inputs) through a stack of recurrent layers and turns
the top layer's state after every step into logits z_t = s_t V + c; a readout makes one prediction
of them. Each is built from a name (:func:`build_model`) and has a plain autograd definition here,
step by step, which the fast paths (:mod:`seqmnist.engine` on the CPU, PyTorch's fused modules
elsewhere) are tested against.

Cells (``CELLS``):
    vanilla   s_t = tanh(x_t U + s_{t-1} W + b)                      the seed's (Keurulainen et al. 2016)
    relu      s_t = max(0, x_t U + s_{t-1} W + b)
    irnn      relu, with W = I and small input weights at the start   (Le, Jaitly & Hinton 2015)
    indrnn    s_t = max(0, x_t U + w * s_{t-1} + b), w a vector        (Li et al. 2018)
    lstm      PyTorch's nn.LSTM equations                              (Hochreiter & Schmidhuber 1997)
    gru       PyTorch's nn.GRU equations                               (Cho et al. 2014)

Readouts (``READOUTS``), over the steps read:
    mean-softmax   argmax of the mean of softmax(z_t): the seed's; its loss is -log of that mean at the label
    mean-logits    argmax of the mean of z_t; cross-entropy of softmax(mean z_t)
    last           argmax of z_T: what the pixel-task papers do; cross-entropy of softmax(z_T)

The seed's model is one configuration (vanilla, no bias, one layer of 200, mean-softmax). Weights
keep the seed's orientation (``x_t @ U``), so a saved model can be recomputed with NumPy; the first
layer's are named U, W, b, the l-th layer's U{l}, W{l}, b{l}, the readout's V and c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from . import engine
from .errors import SeqmnistError

NUM_CLASSES = 10
AUTOGRAD_PATH = "PyTorch autograd through the step-by-step definition"
ENGINE_PATH = "the compiled engine"


@dataclass(frozen=True)
class Cell:
    """What a cell name stands for."""

    family: str  # "elementwise" (one multiply per step, the engine's) or "gated" (PyTorch's LSTM / GRU)
    activation: str = "tanh"
    diagonal: bool = False  # a recurrent vector w instead of a matrix W
    init: str = "uniform"  # its default initialisation
    inits: tuple[str, ...] = ("uniform", "orthogonal", "identity")


CELLS = {
    "vanilla": Cell("elementwise", "tanh"),
    "relu": Cell("elementwise", "relu"),
    "irnn": Cell("elementwise", "relu", init="identity"),
    "indrnn": Cell("elementwise", "relu", diagonal=True, inits=("uniform", "identity")),
    "lstm": Cell("gated", inits=("uniform", "orthogonal")),
    "gru": Cell("gated", inits=("uniform", "orthogonal")),
}
READOUTS = ("mean-softmax", "mean-logits", "last")
INITS = ("uniform", "orthogonal", "identity")
INIT_ABOUT = {
    "uniform": "uniform in +-1/sqrt(fan_in), biases 0 (the seed's; PyTorch's for LSTM/GRU); indrnn: w in [0, 1]",
    "orthogonal": "recurrent weights a random orthogonal matrix (per gate), the rest as uniform",
    "identity": "recurrent weights the identity, input and readout weights N(0, 0.001), biases 0 (Le et al.)",
}


@dataclass(frozen=True)
class ModelSpec:
    """The settings a model is built from."""

    cell: str = "vanilla"
    inputs: int = 28
    hidden: int = 200
    layers: int = 1
    bias: bool = False
    readout: str = "mean-softmax"
    init: str | None = None  # None: the cell's default
    steps: int = 28  # the sequence length, which bounds an indrnn's recurrent weights
    classes: int = NUM_CLASSES

    @property
    def init_scheme(self) -> str:
        return self.init or CELLS[self.cell].init


# --- readouts ------------------------------------------------------------------------------------


def readout_scores(readout: str, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """What the prediction is the argmax of, from per-step logits (steps, batch, classes); ``probs``,
    their softmax, where the caller has it already."""
    if readout == "mean-softmax":
        return (torch.softmax(logits, dim=-1) if probs is None else probs).mean(0)
    if readout == "mean-logits":
        return logits.mean(0)
    return logits[-1]


def readout_loss(readout: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of the readout's loss."""
    if readout == "mean-softmax":
        return averaged_softmax_nll(torch.softmax(logits, dim=-1).mean(0), y)
    return nn.functional.cross_entropy(readout_scores(readout, logits), y)


def running_probs(readout: str, logits: torch.Tensor) -> torch.Tensor:
    """After every step t, the class probabilities the readout would give had the sequence ended
    there: (steps, batch, classes). Its argmax at the last step is the prediction."""
    steps = torch.arange(1, len(logits) + 1, dtype=logits.dtype, device=logits.device)[:, None, None]
    if readout == "mean-softmax":
        return torch.softmax(logits, dim=-1).cumsum(0) / steps
    if readout == "mean-logits":
        return torch.softmax(logits.cumsum(0) / steps, dim=-1)
    return torch.softmax(logits, dim=-1)


def averaged_softmax_nll(mean_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's cost: cross-entropy of the averaged probabilities, averaged over the batch."""
    return -torch.log(mean_probs.gather(1, labels[:, None])).mean()


# --- initial weights ------------------------------------------------------------------------------


class Draws:
    """Random numbers from NumPy's legacy stream (the seed's: float64 draws cast to float32) or from a
    torch.Generator, behind one interface, so every initialisation works with either."""

    def __init__(self, source: np.random.RandomState | torch.Generator):
        self.source = source

    def uniform(self, low: float, high: float, shape: tuple[int, ...]) -> torch.Tensor:
        if isinstance(self.source, np.random.RandomState):
            return torch.from_numpy(self.source.uniform(low, high, shape).astype(np.float32))
        return torch.rand(shape, generator=self.source) * (high - low) + low

    def normal(self, std: float, shape: tuple[int, ...]) -> torch.Tensor:
        if isinstance(self.source, np.random.RandomState):
            return torch.from_numpy(self.source.normal(0.0, std, shape).astype(np.float32))
        return torch.randn(shape, generator=self.source) * std

    def orthogonal(self, n: int) -> torch.Tensor:
        """A random n x n orthogonal matrix: Q of the QR of a Gaussian one, signs fixed (Mezzadri 2007)."""
        q, r = torch.linalg.qr(self.normal(1.0, (n, n)).double())
        return (q * torch.sign(torch.diagonal(r))).float()


def _bound(fan_in: int) -> float:
    return float(np.sqrt(1.0 / fan_in))  # as the seed's np.sqrt(1./input_dim)


# --- the models --------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """What every model offers the training loop, which never asks which cell it trains."""

    spec: ModelSpec

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        """Per-step logits (steps, batch, classes) of sequences x (batch, steps, inputs); with ``fast``
        off, by the plain definition alone."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor, fast: bool = True) -> torch.Tensor:
        return readout_loss(self.spec.readout, self.logits(x, fast), y)

    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor | None:
        """One step of plain SGD on a batch taken by the model's own fast path, its mean loss; None where
        the model has none for these inputs (the trainer then takes autograd and the optimiser)."""
        return None

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        """What computes a batch's gradient on ``device``, in words: printed when a training starts and
        recorded per session, since only the compiled engine's bits are the seed replay's."""
        return AUTOGRAD_PATH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's scores (batch, classes), by the definition."""
        return readout_scores(self.spec.readout, self.logits(x, fast=False))

    def init_weights(self, draws: Draws) -> SequenceClassifier:
        """Draw every weight, in :meth:`draw_order`, by the spec's initialisation."""
        with torch.no_grad():
            for name in self.draw_order():
                parameter = self.get_parameter(name)
                parameter.copy_(self.initial_value(name, tuple(parameter.shape), draws))
        return self

    def draw_order(self) -> list[str]:
        raise NotImplementedError

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        raise NotImplementedError

    def constrain_(self) -> None:
        """Keep the weights where the cell needs them, after every optimiser step (indrnn only)."""

    def first_layer_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input, recurrent and readout weights of the first layer in the x @ U orientation, for figures."""
        raise NotImplementedError

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.named_parameters()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def eval_chunk(self) -> int:
        """Images per forward pass in evaluation: 1,000 for the rows task (the seed's shape included),
        fewer for long sequences, so the buffers stay within ~128 MB whatever the sequence length."""
        width = self.spec.hidden * 4 + self.spec.inputs + 32
        return max(32, min(1000, (1 << 25) // ((self.spec.steps + 1) * width * self.spec.layers)))


class ElementwiseRNN(SequenceClassifier):
    """vanilla, relu, irnn and indrnn: layers of s_t = phi(x_t U + s_{t-1} W + b) (indrnn: w * s_{t-1})."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec, cell = spec, CELLS[spec.cell]
        self.activation, self.diagonal = cell.activation, cell.diagonal
        H = spec.hidden
        for layer in range(1, spec.layers + 1):
            inputs = spec.inputs if layer == 1 else H
            self.register_parameter(_name("U", layer), nn.Parameter(torch.empty(inputs, H)))
            self.register_parameter(_name("W", layer), nn.Parameter(torch.empty(H if self.diagonal else (H, H))))
            if spec.bias:
                self.register_parameter(_name("b", layer), nn.Parameter(torch.empty(H)))
        self.V = nn.Parameter(torch.empty(H, spec.classes))
        self.c = nn.Parameter(torch.empty(spec.classes)) if spec.bias else None
        self._workspace = engine.Workspace()

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden

    def layer_weights(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(U, W, b) of each layer, bottom first (b None without a bias)."""
        return [
            tuple(getattr(self, _name(kind, layer)) if kind != "b" or self.spec.bias else None for kind in "UWb")
            for layer in range(1, self.spec.layers + 1)
        ]

    def first_layer_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.detach().cpu().numpy() for t in (self.U, self.W, self.V))

    def draw_order(self) -> list[str]:
        """The seed's order for its model (U, V, W: layer.py), then the other layers, then the biases."""
        order = ["U", "V", "W"]
        for layer in range(2, self.spec.layers + 1):
            order += [_name("U", layer), _name("W", layer)]
        if self.spec.bias:
            order += [_name("b", layer) for layer in range(1, self.spec.layers + 1)] + ["c"]
        return order

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        scheme, kind = self.spec.init_scheme, name[0]
        if kind in "bc":
            return torch.zeros(shape)
        if kind == "W":
            if self.diagonal:
                return torch.ones(shape) if scheme == "identity" else draws.uniform(0.0, 1.0, shape)
            if scheme == "identity":
                return torch.eye(shape[0])
            if scheme == "orthogonal":
                return draws.orthogonal(shape[0])
        if scheme == "identity":
            return draws.normal(0.001, shape)
        return draws.uniform(-_bound(shape[0]), _bound(shape[0]), shape)

    def constrain_(self) -> None:
        """indrnn: |w| <= 2^(1/T) (Li et al. 2018), so the gradient through T steps cannot explode."""
        if self.diagonal:
            limit = 2.0 ** (1.0 / self.spec.steps)
            with torch.no_grad():
                for _, W, _ in self.layer_weights():
                    W.clamp_(-limit, limit)

    # --- the paths ----------------------------------------------------------------------------

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        if fast and device.type == "cpu" and engine.native_loops() is not None:
            return ENGINE_PATH
        if fast and not self.diagonal:
            return "PyTorch's fused nn.RNN" + (" (cuDNN)" if device.type == "cuda" else "")
        return AUTOGRAD_PATH

    def uses_engine(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32 and engine.native_loops() is not None

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        if not fast:
            return self.definition(x)
        if self.uses_engine(x):
            return engine.layers_logits(self._workspace, x, self.layer_weights(), self.V, self.c, self.activation)
        return self.torch_logits(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, fast: bool = True) -> torch.Tensor:
        if fast and self.uses_engine(x):
            weights = (self.layer_weights(), self.V, self.c)
            return engine.layers_loss(self._workspace, x, y, *weights, self.activation, self.spec.readout)
        return super().loss(x, y, fast)

    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor | None:
        if not self.uses_engine(x):
            return None
        weights = (self.layer_weights(), self.V, self.c)
        return engine.layers_sgd_step(self._workspace, x, y, *weights, self.activation, self.spec.readout, lr)

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        """The cell's equations, step by step, with autograd: the reference."""
        phi = torch.tanh if self.activation == "tanh" else torch.relu
        sequence = x
        for U, W, b in self.layer_weights():
            s = x.new_zeros(x.shape[0], U.shape[1])
            states = []
            for step in sequence.unbind(1):  # unbind: sequence[:, t]'s backward would zero it all every step
                a = step @ U + (s * W if self.diagonal else s @ W)
                s = phi(a if b is None else a + b)
                states.append(s)
            sequence = torch.stack(states, dim=1)
        return self.readout_logits(sequence)

    def readout_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, steps, hidden) states to (steps, batch, classes) logits."""
        z = states.transpose(0, 1) @ self.V
        return z if self.c is None else z + self.c

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """PyTorch's own nn.RNN (cuDNN on a GPU) with this model's weights; indrnn has none: the definition."""
        if self.diagonal:
            return self.definition(x)
        rnn, _ = self.torch_modules()
        rnn.to(x.device)
        states, _ = functional_call(rnn, self.torch_weights(), (x,))
        return self.readout_logits(states)

    # --- PyTorch's modules --------------------------------------------------------------------

    def torch_modules(self, bias: bool | None = None) -> tuple[nn.RNN, nn.Linear]:
        if self.diagonal:
            raise SeqmnistError("indrnn has no PyTorch module (nn.RNN's recurrence is a matrix)")
        s = self.spec
        bias = s.bias if bias is None else bias
        nonlinearity = "tanh" if self.activation == "tanh" else "relu"
        rnn = nn.RNN(s.inputs, s.hidden, s.layers, nonlinearity=nonlinearity, bias=bias, batch_first=True)
        return rnn, nn.Linear(s.hidden, s.classes, bias=bias)

    def torch_weights(self) -> dict[str, torch.Tensor]:
        """nn.RNN's weights (weight_ih = U^T, weight_hh = W^T, bias_ih = b, bias_hh = 0) as views of ours."""
        weights = {}
        for k, (U, W, b) in enumerate(self.layer_weights()):
            weights.update({f"weight_ih_l{k}": U.T, f"weight_hh_l{k}": W.T})
            if b is not None:
                weights.update({f"bias_ih_l{k}": b, f"bias_hh_l{k}": torch.zeros_like(b)})
        return weights

    def to_torch(self) -> tuple[nn.RNN, nn.Linear]:
        """This model as torch.nn.RNN (batch_first) and nn.Linear: the same function, PyTorch's layout."""
        rnn, linear = self.torch_modules()
        with torch.no_grad():
            for name, value in self.torch_weights().items():
                getattr(rnn, name).copy_(value)
            linear.weight.copy_(self.V.T)
            if self.c is not None:
                linear.bias.copy_(self.c)
        return rnn, linear

    @staticmethod
    def from_torch(rnn: nn.RNN, linear: nn.Linear, readout: str = "mean-softmax") -> ElementwiseRNN:
        """A model with the weights of torch.nn.RNN and nn.Linear (U = weight_ih^T, W = weight_hh^T,
        b = bias_ih + bias_hh, V = weight^T, c = bias)."""
        if rnn.bidirectional or rnn.proj_size or (rnn.bias != (linear.bias is not None)):
            raise SeqmnistError("only a one-directional nn.RNN without projections, biased like its Linear, converts")
        cell = "vanilla" if rnn.nonlinearity == "tanh" else "relu"
        spec = ModelSpec(
            cell, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, readout, None, 28, linear.out_features
        )
        model = ElementwiseRNN(spec)
        with torch.no_grad():
            for k, (U, W, b) in enumerate(model.layer_weights()):
                U.copy_(getattr(rnn, f"weight_ih_l{k}").T)
                W.copy_(getattr(rnn, f"weight_hh_l{k}").T)
                if b is not None:
                    b.copy_(getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}"))
            model.V.copy_(linear.weight.T)
            if model.c is not None:
                model.c.copy_(linear.bias)
        return model


class VanillaRNN(ElementwiseRNN):
    """The seed's model: one layer of s_t = tanh(x_t U + s_{t-1} W), no bias, the mean of the softmaxes."""

    def __init__(self, hidden_size: int = 200, input_size: int = 28, num_classes: int = NUM_CLASSES):
        super().__init__(ModelSpec("vanilla", input_size, hidden_size, classes=num_classes))

    def reset_parameters(self, seed: int) -> VanillaRNN:
        """Uniform in +-1/sqrt(fan_in) from torch.Generator(seed) (tests and benchmarks)."""
        return self.init_weights(Draws(torch.Generator().manual_seed(seed)))


class GatedRNN(SequenceClassifier):
    """lstm and gru: PyTorch's modules (fused kernels on the CPU and GPU) under a readout."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        module = nn.LSTM if spec.cell == "lstm" else nn.GRU
        self.rnn = module(spec.inputs, spec.hidden, spec.layers, bias=spec.bias, batch_first=True)
        self.V = nn.Parameter(torch.empty(spec.hidden, spec.classes))
        self.c = nn.Parameter(torch.empty(spec.classes)) if spec.bias else None
        self.gates = 4 if spec.cell == "lstm" else 3

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        if not fast:
            return AUTOGRAD_PATH
        return f"PyTorch's fused {type(self.rnn).__name__}" + (" (cuDNN)" if device.type == "cuda" else "")

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        states = self.rnn(x)[0] if fast else self.definition(x)
        z = (states @ self.V).transpose(0, 1)  # one multiply of the contiguous states, then the view
        return z if self.c is None else z + self.c

    def first_layer_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = (self.rnn.weight_ih_l0.T, self.rnn.weight_hh_l0.T, self.V)
        return tuple(t.detach().cpu().numpy() for t in weights)

    def draw_order(self) -> list[str]:
        order = ["rnn.weight_ih_l0", "V", "rnn.weight_hh_l0"]
        for k in range(1, self.spec.layers):
            order += [f"rnn.weight_ih_l{k}", f"rnn.weight_hh_l{k}"]
        if self.spec.bias:
            order += [f"rnn.bias_{kind}_l{k}" for k in range(self.spec.layers) for kind in ("ih", "hh")] + ["c"]
        return order

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        H = self.spec.hidden
        if name == "c":
            return torch.zeros(shape)
        if "weight_hh" in name and self.spec.init_scheme == "orthogonal":
            return torch.cat([draws.orthogonal(H) for _ in range(self.gates)])
        return draws.uniform(-_bound(H), _bound(H), shape)  # PyTorch's default for LSTM and GRU

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        """PyTorch's LSTM / GRU equations, step by step, with autograd: (batch, steps, hidden) states."""
        sequence = x
        for k in range(self.spec.layers):
            w_ih, w_hh = getattr(self.rnn, f"weight_ih_l{k}"), getattr(self.rnn, f"weight_hh_l{k}")
            b_ih = getattr(self.rnn, f"bias_ih_l{k}") if self.spec.bias else 0
            b_hh = getattr(self.rnn, f"bias_hh_l{k}") if self.spec.bias else 0
            h = x.new_zeros(x.shape[0], self.spec.hidden)
            cell = torch.zeros_like(h)
            states = []
            for step in sequence.unbind(1):
                gi, gh = step @ w_ih.T + b_ih, h @ w_hh.T + b_hh
                if self.spec.cell == "lstm":
                    i, f, g, o = (gi + gh).chunk(4, dim=1)
                    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(cell)
                else:
                    (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
                    r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                    h = (1 - z) * torch.tanh(ni + r * nh) + z * h
                states.append(h)
            sequence = torch.stack(states, dim=1)
        return sequence


def _name(kind: str, layer: int) -> str:
    return kind if layer == 1 else f"{kind}{layer}"


def build_model(spec: ModelSpec) -> SequenceClassifier:
    """The model a spec names (the registry: ``CELLS``)."""
    if spec.cell not in CELLS:
        raise SeqmnistError(f"--cell must be one of {', '.join(CELLS)} (got {spec.cell!r})")
    return ElementwiseRNN(spec) if CELLS[spec.cell].family == "elementwise" else GatedRNN(spec)
