"""The gated cells: PyTorch's LSTM and GRU (fused kernels on the CPU and the GPU) under a readout.

    lstm   PyTorch's nn.LSTM equations   (Hochreiter & Schmidhuber 1997)
    gru    PyTorch's nn.GRU equations    (Cho et al. 2014)

Their fast path is PyTorch's own module; the definition writes its equations out, step by step.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..model import AUTOGRAD_PATH, Draws, ModelSpec, SequenceClassifier, uniform_bound
from ..registry import register_cell


class GatedRNN(SequenceClassifier):
    """A PyTorch gated module (``module``, of ``gates`` gates) under a readout; :meth:`step` is its
    equations for one step, the definition's."""

    module: ClassVar[type[nn.RNNBase]]
    gates: ClassVar[int]
    inits = ("uniform", "orthogonal")
    recurrent = ("rnn.weight_hh_l*",)

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.rnn = self.module(spec.inputs, spec.hidden, spec.layers, bias=spec.bias, batch_first=True)
        self.V = nn.Parameter(torch.empty(spec.hidden, spec.classes))
        self.c = nn.Parameter(torch.empty(spec.classes)) if spec.bias else None

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        if not fast:
            return AUTOGRAD_PATH
        return f"PyTorch's fused {self.module.__name__}" + (" (cuDNN)" if device.type == "cuda" else "")

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        states = self.rnn(x)[0] if fast else self.definition(x)
        z = (states @ self.V).transpose(0, 1)  # one multiply of the contiguous states, then the view
        return z if self.c is None else z + self.c

    def has_torch_module(self) -> bool:
        return True

    def to_torch(self) -> tuple[nn.RNNBase, nn.Linear]:
        linear = nn.Linear(self.spec.hidden, self.spec.classes, bias=self.c is not None)
        with torch.no_grad():
            linear.weight.copy_(self.V.T)
            if self.c is not None:
                linear.bias.copy_(self.c)
        return copy.deepcopy(self.rnn), linear

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
        return draws.uniform(-uniform_bound(H), uniform_bound(H), shape)  # PyTorch's default for LSTM and GRU

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        """The module's equations, step by step, with autograd: (batch, steps, hidden) states."""
        sequence = x
        for k in range(self.spec.layers):
            h = x.new_zeros(x.shape[0], self.spec.hidden)
            cell = torch.zeros_like(h)
            states = []
            for step in sequence.unbind(1):
                h, cell = self.layer_step(k, step, h, cell)
                states.append(h)
            sequence = torch.stack(states, dim=1)
        return sequence

    def layer_step(
        self, k: int, x_t: torch.Tensor, h: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer k's next state and cell, by :meth:`step` on its weights."""
        w_ih, w_hh = getattr(self.rnn, f"weight_ih_l{k}"), getattr(self.rnn, f"weight_hh_l{k}")
        b_ih = getattr(self.rnn, f"bias_ih_l{k}") if self.spec.bias else 0
        b_hh = getattr(self.rnn, f"bias_hh_l{k}") if self.spec.bias else 0
        return self.step(x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh, h, cell)

    def state_sizes(self) -> list[int]:
        """Each layer's state h and cell (a GRU's cell stays zero: one layout for both)."""
        return [self.spec.hidden] * (2 * self.spec.layers)

    def advance(self, x_t: torch.Tensor, state: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        state = list(state)
        for k in range(self.spec.layers):
            x_t, state[2 * k + 1] = self.layer_step(k, x_t, state[2 * k], state[2 * k + 1])
            state[2 * k] = x_t
        z = x_t @ self.V
        return state, z if self.c is None else z + self.c

    def step(
        self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next state and cell from the step's input and recurrent gate sums."""
        raise NotImplementedError


@register_cell("lstm")
class LSTM(GatedRNN):
    about = "PyTorch's nn.LSTM equations (Hochreiter & Schmidhuber 1997)"
    module = nn.LSTM
    gates = 4

    def step(
        self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


@register_cell("gru")
class GRU(GatedRNN):
    about = "PyTorch's nn.GRU equations (Cho et al. 2014)"
    module = nn.GRU
    gates = 3

    def step(
        self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        return (1 - z) * torch.tanh(ni + r * nh) + z * h, cell
