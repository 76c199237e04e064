"""The elementwise cells: layers of s_t = phi(x_t U + s_{t-1} W + b), one multiply per step.

    vanilla   s_t = tanh(x_t U + s_{t-1} W + b)                      the seed's (Keurulainen et al. 2016)
    relu      s_t = max(0, x_t U + s_{t-1} W + b)
    irnn      relu, with W = I and small input weights at the start   (Le, Jaitly & Hinton 2015)
    indrnn    s_t = max(0, x_t U + w * s_{t-1} + b), w a vector        (Li et al. 2018)

The compiled engine (:mod:`seqmnist.engine`) runs the activations engine.cpp exports on the CPU;
PyTorch's nn.RNN runs tanh and relu with a matrix W elsewhere; any other cell runs its definition.
The IndRNN, whose steps are coupled only through w, also has a layer-parallel path: one multiply makes
every step's x_t U + b, a scan the states (:class:`IndRNN`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .. import engine, kernels
from ..errors import SeqmnistError
from ..model import (
    AUTOGRAD_PATH,
    CELL_OPTIONS,
    ENGINE_PATH,
    NUM_CLASSES,
    Draws,
    ModelSpec,
    SequenceClassifier,
    sequence_dropout,
    uniform_bound,
)
from ..registry import register_cell

TORCH_NONLINEARITIES = ("tanh", "relu")  # nn.RNN's


class ElementwiseRNN(SequenceClassifier):
    """Layers of s_t = phi(x_t U + s_{t-1} W + b) (``diagonal``: w * s_{t-1}). A subclass names its
    activation; one the engine or nn.RNN does not know (``activation`` None) overrides :meth:`phi`."""

    activation: ClassVar[str | None] = "tanh"  # its name in engine.cpp and nn.RNN; None: neither has it
    diagonal: ClassVar[bool] = False  # a recurrent vector w instead of a matrix W
    inits = ("uniform", "orthogonal", "identity")
    recurrent = ("W", "W[0-9]*")

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        H = spec.hidden
        for layer in range(1, spec.layers + 1):
            inputs = spec.inputs if layer == 1 else H
            self.register_parameter(_name("U", layer), nn.Parameter(torch.empty(inputs, H)))
            self.register_parameter(_name("W", layer), nn.Parameter(torch.empty(H if self.diagonal else (H, H))))
            if spec.bias:
                self.register_parameter(_name("b", layer), nn.Parameter(torch.empty(H)))
        self.V = nn.Parameter(torch.empty(H, spec.classes))
        self.c = nn.Parameter(torch.empty(spec.classes)) if spec.bias else None
        self.workspaces = engine.Workspaces()

    def phi(self, a: torch.Tensor) -> torch.Tensor:
        """The activation, for the definition."""
        return getattr(torch, self.activation)(a)

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden

    def layer_weights(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(U, W, b) of each layer, bottom first (b None without a bias)."""
        return [
            tuple(getattr(self, _name(kind, layer)) if kind != "b" or self.spec.bias else None for kind in "UWb")
            for layer in range(1, self.spec.layers + 1)
        ]

    def recurrence_eigenvalues(self) -> list[np.ndarray]:
        """Each layer's eigenvalues of W (indrnn: its w, real): near the unit circle, a state neither
        fades nor explodes over the steps."""
        weights = [W.detach().cpu().double().numpy() for _, W, _ in self.layer_weights()]
        return [W.astype(complex) if self.diagonal else np.linalg.eigvals(W) for W in weights]

    def engine_weights(self) -> engine.Weights:
        """What the engine's passes take: every layer's (U, W, b), V and c."""
        return self.layer_weights(), self.V, self.c

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
        return draws.uniform(-uniform_bound(shape[0]), uniform_bound(shape[0]), shape)

    # --- the paths ----------------------------------------------------------------------------

    def training_path(self, device: torch.device, fast: bool = True, dtype: torch.dtype = torch.float32) -> str:
        """The one decision of what computes the logits and gradient, for inputs of ``dtype`` on
        ``device``: the start-of-training line prints it and :meth:`logits` and :meth:`loss` take it."""
        if fast and device.type == "cpu" and dtype == torch.float32 and self.engine_covers():
            return ENGINE_PATH
        if fast and self.has_torch_module():
            return "PyTorch's fused nn.RNN" + (" (cuDNN)" if device.type == "cuda" else "")
        return AUTOGRAD_PATH

    def path_for(self, x: torch.Tensor, fast: bool = True) -> str:
        """The path these inputs take (:meth:`training_path` for their device and dtype)."""
        return self.training_path(x.device, fast, x.dtype)

    def engine_covers(self) -> bool:
        """Whether the compiled engine is here and runs this cell with its readout."""
        return engine.covers(self.activation) and self.readout.engine_code is not None

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        path = self.path_for(x, fast)
        if path == ENGINE_PATH:
            return engine.layers_logits(self.workspaces.get(), x, self.engine_weights(), self.activation)
        return self.definition(x) if path == AUTOGRAD_PATH else self.torch_logits(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, fast: bool = True) -> torch.Tensor:
        if self.path_for(x, fast) == ENGINE_PATH:
            weights = self.engine_weights()
            return engine.layers_loss(self.workspaces.get(), x, y, weights, self.activation, self.spec.readout)
        return super().loss(x, y, fast)

    def has_fused_pass(self) -> bool:
        return self.path_for(self.V) == ENGINE_PATH  # the weights are where, and as what, the batches will be

    def fused_gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = self.engine_weights()
        return engine.layers_gradients(self.workspaces.get(), x, y, weights, self.activation, self.spec.readout)

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x
        for depth, (U, W, b) in enumerate(self.layer_weights()):
            s = x.new_zeros(x.shape[0], U.shape[1])
            states = []
            for step in sequence.unbind(1):  # unbind: sequence[:, t]'s backward would zero it all every step
                s = self.layer_step(U, W, b, step, s)
                states.append(s)
            sequence = self.after_layer(torch.stack(states, dim=1), depth)
        return self.readout_logits(sequence)

    def layer_step(
        self, U: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, x_t: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """One layer's next state: phi(x_t U + s W + b)."""
        a = x_t @ U + (s * W if self.diagonal else s @ W)
        return self.phi(a if b is None else a + b)

    def state_sizes(self) -> list[int]:
        return [self.spec.hidden] * self.spec.layers

    def advance(self, x_t: torch.Tensor, state: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        state = list(state)
        for layer, (U, W, b) in enumerate(self.layer_weights()):
            state[layer] = self.layer_step(U, W, b, x_t, state[layer])
            x_t = self.after_layer(state[layer][:, None], layer)[:, 0]  # what the next layer reads
        z = x_t @ self.V
        return state, z if self.c is None else z + self.c

    def after_layer(self, states: torch.Tensor, depth: int) -> torch.Tensor:
        """What a layer's states (batch, steps, hidden) pass through before the next layer reads them."""
        return states

    def readout_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, steps, hidden) states to (steps, batch, classes) logits."""
        z = states.transpose(0, 1) @ self.V
        return z if self.c is None else z + self.c

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """PyTorch's own nn.RNN (cuDNN on a GPU) with this model's weights."""
        rnn, _ = self.torch_modules()
        rnn.to(x.device)
        states, _ = functional_call(rnn, self.torch_weights(), (x,))
        return self.readout_logits(states)

    # --- PyTorch's modules --------------------------------------------------------------------

    def has_torch_module(self) -> bool:
        return not self.diagonal and self.activation in TORCH_NONLINEARITIES

    def torch_modules(self, bias: bool | None = None) -> tuple[nn.RNN, nn.Linear]:
        if not self.has_torch_module():
            raise SeqmnistError(f"{self.name} has no PyTorch module (nn.RNN's recurrence is a matrix, tanh or relu)")
        s = self.spec
        bias = s.bias if bias is None else bias
        rnn = nn.RNN(s.inputs, s.hidden, s.layers, nonlinearity=self.activation, bias=bias, batch_first=True)
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
        b = bias_ih + bias_hh, V = weight^T, c = bias): a vanilla cell for tanh, a relu cell for relu."""
        if rnn.bidirectional or rnn.proj_size or (rnn.bias != (linear.bias is not None)):
            raise SeqmnistError("only a one-directional nn.RNN without projections, biased like its Linear, converts")
        cell = {TanhRNN.activation: TanhRNN, ReluRNN.activation: ReluRNN}[rnn.nonlinearity]
        spec = ModelSpec(
            cell.name, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, readout, None, 28, linear.out_features
        )
        model = cell(spec)
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


@register_cell("vanilla")
class TanhRNN(ElementwiseRNN):
    about = "s_t = tanh(x_t U + s_{t-1} W + b): the seed's (Keurulainen et al. 2016)"


@register_cell("relu")
class ReluRNN(ElementwiseRNN):
    about = "s_t = max(0, x_t U + s_{t-1} W + b)"
    activation = "relu"


@register_cell("irnn")
class IRNN(ElementwiseRNN):
    about = "relu, with W = I and small input weights at the start (Le, Jaitly & Hinton 2015)"
    activation = "relu"
    init = "identity"


PARALLEL_PATH = "one multiply a layer, then the compiled IndRNN scan"
PARALLEL_LOOP_PATH = "one multiply a layer, then a PyTorch step loop"


@register_cell("indrnn")
class IndRNN(ElementwiseRNN):
    """The IndRNN, and its recipe's parts (Li et al. 2018; their pixel-MNIST code, IndRNN_pytorch):
    batch norm over (batch, steps) after every layer, dropout with one mask per sequence (their
    Dropout_overtime), |w| kept within recurrent_max^(1/T), the top layer's w near one.

    With batch norm or dropout its fast path is layer-parallel: w couples each state only to its own
    past, so a layer's inputs x_t U for all steps are one multiply (B*T x I)(I x H), and only
    max(0, a_t + b + w * s_{t-1}) is sequential: scan.cpp's loop, an image a task. Without them the
    engine's step loop stays its fast path, which bench/indrnn.py found the faster on the pixel task
    and alike on rows (docs/speed.md).
    """

    about = "s_t = max(0, x_t U + w * s_{t-1} + b), w a vector kept in |w| <= 2^(1/T) (Li et al. 2018)"
    activation = "relu"
    diagonal = True
    inits = ("uniform", "identity")
    takes = CELL_OPTIONS

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        if spec.norm == "batch":  # each layer's scale and shift, and running statistics for evaluation
            for layer in range(1, spec.layers + 1):
                self.register_parameter(_name("gamma", layer), nn.Parameter(torch.ones(spec.hidden)))
                self.register_parameter(_name("beta", layer), nn.Parameter(torch.zeros(spec.hidden)))
                self.register_buffer(_name("mean", layer), torch.zeros(spec.hidden))
                self.register_buffer(_name("var", layer), torch.ones(spec.hidden))

    @property
    def recurrent_limit(self) -> float:
        """|w| <= recurrent_max^(1/T): no state grows by more than recurrent_max over the T steps."""
        return self.spec.recurrent_max ** (1.0 / self.spec.steps)

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        top = _name("W", self.spec.layers)
        if name == top and self.spec.last_layer_init == "near-one":  # the top layer remembers longest
            return draws.uniform(1.0 / self.recurrent_limit, self.recurrent_limit, shape)
        return super().initial_value(name, shape, draws)

    def constrain_(self) -> None:
        """|w| <= recurrent_max^(1/T) (Li et al. 2018), so the gradient through T steps cannot explode."""
        with torch.no_grad():
            for _, W, _ in self.layer_weights():
                W.clamp_(-self.recurrent_limit, self.recurrent_limit)

    def after_layer(self, states: torch.Tensor, depth: int) -> torch.Tensor:
        """Batch norm over every (image, step), then in training dropout with one mask per sequence."""
        if self.spec.norm == "batch":
            mean, var, gamma, beta = (
                getattr(self, _name(kind, depth + 1)) for kind in ("mean", "var", "gamma", "beta")
            )
            rows = states.reshape(-1, states.shape[-1])
            states = nn.functional.batch_norm(rows, mean, var, gamma, beta, self.training).view_as(states)
        if self.training and self.spec.dropout:
            states = sequence_dropout(states, self.spec.dropout)
        return states

    # --- the paths ----------------------------------------------------------------------------

    def layer_parallel(self) -> bool:
        """Whether the layers must run one after another, each over all steps: with batch norm or
        dropout, which the per-step engine has not."""
        return self.spec.norm != "none" or self.spec.dropout > 0

    def training_path(self, device: torch.device, fast: bool = True, dtype: torch.dtype = torch.float32) -> str:
        """The engine where it runs the model; else, fast, layer by layer: the compiled scan where the
        library is built, a PyTorch step loop elsewhere."""
        path = super().training_path(device, fast, dtype)
        if fast and (self.layer_parallel() or path != ENGINE_PATH):
            return PARALLEL_PATH if kernels.available(device) else PARALLEL_LOOP_PATH
        return path

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        if self.path_for(x, fast) in (PARALLEL_PATH, PARALLEL_LOOP_PATH):
            return self.parallel_logits(x)
        return super().logits(x, fast)

    def loss(self, x: torch.Tensor, y: torch.Tensor, fast: bool = True) -> torch.Tensor:
        if self.path_for(x, fast) in (PARALLEL_PATH, PARALLEL_LOOP_PATH):
            states = self.parallel_states(x)
            last = states[:, -1:] if self.readout.scores_last_step else states  # the readout of one step only
            return self.readout.loss(self.readout_logits(last), y)
        return super().loss(x, y, fast)

    def parallel_logits(self, x: torch.Tensor, scan: Scan | None = None) -> torch.Tensor:
        return self.readout_logits(self.parallel_states(x, scan))

    def parallel_states(self, x: torch.Tensor, scan: Scan | None = None) -> torch.Tensor:
        """The top layer's states (batch, steps, hidden), layer by layer: every step's x_t U + b in one
        multiply, then the recurrence by ``scan`` (by default scan.cpp's on the CPU, else :func:`step_loop`)."""
        scan = scan or (kernels.relu_scan if kernels.available(x.device) else step_loop)
        sequence = x
        for depth, (U, w, b) in enumerate(self.layer_weights()):
            a = sequence.reshape(-1, sequence.shape[-1]) @ U
            sequence = self.after_layer(scan(a.view(*sequence.shape[:2], -1), w, b), depth)
        return sequence


Scan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def step_loop(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """s_t = max(0, a_t + b + w * s_{t-1}) over a (batch, steps, hidden), a step at a time in PyTorch."""
    a = a if b is None else a + b
    s, states = a.new_zeros(a.shape[0], a.shape[2]), []
    for a_t in a.unbind(1):
        s = torch.relu(a_t + w * s)
        states.append(s)
    return torch.stack(states, dim=1)


class VanillaRNN(TanhRNN):
    """The seed's model from its sizes: one layer of s_t = tanh(x_t U + s_{t-1} W), no bias, the mean
    of the softmaxes."""

    def __init__(self, hidden_size: int = 200, input_size: int = 28, num_classes: int = NUM_CLASSES):
        super().__init__(ModelSpec(TanhRNN.name, input_size, hidden_size, classes=num_classes))


def _name(kind: str, layer: int) -> str:
    return kind if layer == 1 else f"{kind}{layer}"
