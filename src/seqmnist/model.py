"""What every recurrent classifier of sequences shares; the cells themselves are in :mod:`seqmnist.cells`.

Every model reads a sequence x (batch, steps, inputs) through a stack of recurrent layers and turns
the top layer's state after every step into logits z_t = s_t V + c; a readout
(:mod:`seqmnist.readouts`) makes one prediction of them. Each is built from a name
(:func:`build_model`, through :mod:`seqmnist.registry`) and has a plain autograd definition, step by
step, which the fast paths (:mod:`seqmnist.engine` on the CPU, PyTorch's fused modules elsewhere)
are tested against.

The seed's model is one configuration (vanilla, no bias, one layer of 200, mean-softmax). Weights
keep the seed's orientation (``x_t @ U``), so a saved model can be recomputed with NumPy; the first
layer's are named U, W, b, the l-th layer's U{l}, W{l}, b{l}, the readout's V and c.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import SeqmnistError
from .readouts import Readout, get_readout, readout_names
from .registry import get_cell

NUM_CLASSES = 10
AUTOGRAD_PATH = "PyTorch autograd through the step-by-step definition"
ENGINE_PATH = "the compiled engine"


NORMS = ("none", "batch")
LAST_LAYER_INITS = ("same", "near-one")
# The settings only some cells take (``SequenceClassifier.takes``): at their defaults for the others.
CELL_OPTIONS = ("norm", "dropout", "recurrent_max", "last_layer_init")

INIT_ABOUT = {
    "uniform": "uniform in +-1/sqrt(fan_in), biases 0 (the seed's; PyTorch's for LSTM/GRU); indrnn: w in [0, 1]",
    "orthogonal": "recurrent weights a random orthogonal matrix (per gate), the rest as uniform",
    "identity": "recurrent weights the identity, input and readout weights N(0, 0.001), biases 0 (Le et al.)",
    "ring": "lru's: lambda uniform on the ring 0.9 <= |lambda| <= 0.999 (Orvieto et al.)",
    "s4d-lin": "s4d's: A_n = -1/2 + i pi n, log dt uniform in [log 0.001, log 0.1] (Gu et al.)",
}


def sequence_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x (batch, steps, features) with a share p of each sequence's features zeroed at every step (one mask
    per sequence, as Li et al. and S4's tied dropout draw it: a feature dropped at one step is dropped at all,
    so the recurrence cannot route around it), the rest scaled by 1 / (1 - p)."""
    keep = 1.0 - p
    return x * x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep) / keep


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
    # The IndRNN recipe's parts (Li et al. 2018), each for the cells that name it in ``takes``.
    norm: str = "none"  # "batch": batch normalisation over (batch, steps) after every layer
    dropout: float = 0.0  # in training, after every layer (sequence_dropout)
    recurrent_max: float = 2.0  # |w| <= recurrent_max^(1/steps)
    last_layer_init: str = "same"  # "near-one": the top layer's w in [recurrent_max^(-1/T), recurrent_max^(1/T)]
    state: int | None = None  # the state size N of a cell that has one apart from hidden; None: its default

    @property
    def init_scheme(self) -> str:
        return self.init or get_cell(self.cell).init


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

    def seed(self) -> int:
        """A seed for torch's global generator, drawn from this stream (for modules that draw their own)."""
        if isinstance(self.source, np.random.RandomState):
            return int(self.source.randint(2**31))
        return int(torch.randint(2**62, (1,), generator=self.source))

    def orthogonal(self, n: int) -> torch.Tensor:
        """A random n x n orthogonal matrix: Q of the QR of a Gaussian one, signs fixed (Mezzadri 2007)."""
        q, r = torch.linalg.qr(self.normal(1.0, (n, n)).double())
        return (q * torch.sign(torch.diagonal(r))).float()


# --- the models --------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """What every model offers the training loop, which never asks which cell it trains.

    A new cell does not extend this: it writes a :class:`seqmnist.cell.Cell` (one layer's step), which
    :class:`seqmnist.cell.CellStack` turns into one of these. The built-in families (seqmnist.cells)
    extend it directly, since their fast paths fuse the layers and the readout; each is registered by
    name (:func:`seqmnist.registry.register_cell`), declares what it takes in the class attributes
    below and builds itself from a :class:`ModelSpec`.
    """

    name: str  # set by register_cell
    about: str = ""  # one line: the equation and the citation (the CLI's --cell help)
    init: str = "uniform"  # its default initialisation
    inits: tuple[str, ...] = ("uniform",)  # the initialisations it takes
    readouts: tuple[str, ...] = readout_names()  # the readouts it takes
    max_layers: int = 16
    takes_bias: bool = True
    default_state: int | None = None  # the state size N a cell with one apart from hidden takes by default
    takes: tuple[str, ...] = ()  # which of CELL_OPTIONS it takes
    # the parameters that carry the state from step to step (names or fnmatch patterns), which a recipe may
    # give their own learning rate and spare from weight decay (seqmnist.recipes.parameter_groups)
    recurrent: tuple[str, ...] = ()
    spec: ModelSpec

    @classmethod
    def build(cls, spec: ModelSpec) -> SequenceClassifier:
        return cls(spec)

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Refuse, naming the flag, settings this cell does not take."""
        if spec.init is not None and spec.init not in cls.inits:
            raise SeqmnistError(f"--init {spec.init} is not for the {cls.name} cell (it takes {', '.join(cls.inits)})")
        if spec.readout not in cls.readouts:
            raise SeqmnistError(
                f"--readout {spec.readout} is not for the {cls.name} cell (it takes {', '.join(cls.readouts)})"
            )
        if spec.layers > cls.max_layers:
            raise SeqmnistError(f"--layers {spec.layers}: the {cls.name} cell stacks at most {cls.max_layers}")
        if spec.bias and not cls.takes_bias:
            raise SeqmnistError(f"--bias is not for the {cls.name} cell (it has no biases)")
        refuse_options(cls.name, cls.takes, spec, CELL_OPTIONS)
        if spec.state is not None and cls.default_state is None:
            raise SeqmnistError(f"--state is not for the {cls.name} cell (its state is --hidden)")

    @property
    def readout(self) -> Readout:
        return get_readout(self.spec.readout)

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        """Per-step logits (steps, batch, classes) of sequences x (batch, steps, inputs); with ``fast``
        off, by the plain definition alone."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor, fast: bool = True) -> torch.Tensor:
        return self.readout.loss(self.logits(x, fast), y)

    def has_fused_pass(self) -> bool:
        """Whether :meth:`fused_gradients` runs for this model's weights where they are now."""
        return False

    def fused_gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The batch's mean loss and the gradient of every parameter, in ``parameters()`` order, by the
        model's own fused pass, without autograd (where :meth:`has_fused_pass`)."""
        raise NotImplementedError(f"the {self.name} cell has no fused pass")

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        """What computes a batch's gradient on ``device``, in words: printed when a training starts and
        recorded per session, since only the compiled engine's bits are the seed replay's."""
        return AUTOGRAD_PATH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's scores (batch, classes), by the path training takes."""
        return self.readout.scores(self.logits(x))

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        """The cell's equations, step by step, with autograd: the reference every fast path is held to."""
        raise NotImplementedError

    def state_sizes(self) -> list[int]:
        """The width of each state tensor one step hands the next, (batch, width) each; all are zeros
        before the first step."""
        raise NotImplementedError(f"the {self.name} cell has no step-by-step form")

    def advance(self, x_t: torch.Tensor, state: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One step of the definition: the next state and the step's logits z_t (batch, classes) from the
        step's input (batch, inputs). Streaming reads (and the ONNX step form) run on it."""
        raise NotImplementedError(f"the {self.name} cell has no step-by-step form")

    def stepped_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits (steps, batch, classes) by :meth:`advance`, one input at a time from zero
        states: the recurrent mode, which must give what :meth:`logits` gives."""
        state, logits = [x.new_zeros(len(x), width) for width in self.state_sizes()], []
        for x_t in x.unbind(1):
            state, z = self.advance(x_t, state)
            logits.append(z)
        return torch.stack(logits)

    def init_weights(self, draws: Draws) -> SequenceClassifier:
        """Draw every weight, in the family's ``draw_order()``, by its ``initial_value``."""
        with torch.no_grad():
            for name in self.draw_order():
                parameter = self.get_parameter(name)
                parameter.copy_(self.initial_value(name, tuple(parameter.shape), draws))
        return self

    def reset_parameters(self, seed: int) -> SequenceClassifier:
        """The spec's initialisation from torch.Generator(seed) (tests and benchmarks)."""
        return self.init_weights(Draws(torch.Generator().manual_seed(seed)))

    def constrain_(self) -> None:
        """Keep the weights where the cell needs them, after every optimiser step (indrnn's)."""

    def eval_chunk(self) -> int:
        """Images per forward pass in evaluation: 1,000 for the rows task (the seed's shape included),
        fewer for long sequences, so the buffers stay within ~128 MB whatever the sequence length."""
        width = self.spec.hidden * 4 + self.spec.inputs + 32
        return max(32, min(1000, (1 << 25) // ((self.spec.steps + 1) * width * self.spec.layers)))


def uniform_bound(fan_in: int) -> float:
    return float(np.sqrt(1.0 / fan_in))  # as the seed's np.sqrt(1./input_dim)


def refuse_options(cell: str, takes: Collection[str], spec: ModelSpec, options: Iterable[str]) -> None:
    """Refuse, naming the flag, any of ``options`` set away from its default that the cell does not take."""
    defaults = ModelSpec()
    for option in options:
        if option not in takes and getattr(spec, option) != getattr(defaults, option):
            raise SeqmnistError(f"--{option.replace('_', '-')} is not for the {cell} cell")


def check_spec(spec: ModelSpec) -> None:
    """Refuse, in one line naming the flag, a cell that is not registered or settings it does not take."""
    get_readout(spec.readout)
    get_cell(spec.cell).check(spec)


def build_model(spec: ModelSpec) -> SequenceClassifier:
    """The model a spec names (its cell's class, from :mod:`seqmnist.registry`), in evaluation mode: only
    a training step (:func:`seqmnist.train.train_step`) runs in training mode (batch norm, dropout)."""
    check_spec(spec)
    return get_cell(spec.cell).build(spec).eval()
