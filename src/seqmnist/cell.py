"""The cell contract: what a new recurrent cell writes, in the package or in a file of one's own
(docs/cells.md has a complete one).

A cell is one layer's recurrence, built from ``inputs`` and ``hidden`` (and the model settings it
names in ``takes``), with one step, its definition, that everything runs on::

    state, x_t  ->  state, h_t      state (batch, state_size()), x_t (batch, inputs), h_t (batch, hidden)

from a zero state. It may add a parallel form (:meth:`Cell.sequence`), which training and evaluation
then take. :class:`CellStack` makes the model: the layers, a linear readout, the initial weights.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .errors import SeqmnistError
from .model import AUTOGRAD_PATH, CELL_OPTIONS, ModelSpec, SequenceClassifier, refuse_options
from .readouts import readout_names


class Cell(nn.Module):
    """One recurrent layer. A new cell writes ``__init__`` and :meth:`step`; :meth:`state_size` where its
    state is not ``hidden`` wide; :meth:`sequence` where it has a parallel form."""

    name: ClassVar[str]  # set by register_cell
    about: ClassVar[str] = ""  # one line for --cell's help: the equation and where it comes from
    takes: ClassVar[tuple[str, ...]] = ()  # model settings its constructor takes by keyword: bias, state, dropout...
    recurrent: ClassVar[tuple[str, ...]] = ()  # parameters that carry the state (--recurrent-lr, --no-decay-recurrent)
    readouts: ClassVar[tuple[str, ...]] = readout_names()
    init: ClassVar[str] = "own"  # each module's reset_parameters; --init is not for a cell of this contract
    inits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.inputs, self.hidden = inputs, hidden

    def state_size(self) -> int:
        """The width of the state one step hands the next."""
        return self.hidden

    def step(self, state: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next state and this step's output (batch, hidden) from the state and the step's input."""
        raise NotImplementedError(f"the {self.name} cell defines no step")

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Every step's output (batch, steps, hidden) of a whole sequence x (batch, steps, inputs); by
        default :meth:`step` a step at a time. Override it with the cell's parallel form."""
        return steps_of(self, x)

    def reset_parameters(self) -> None:
        """The cell's own parameters (not its modules'), uniform in +-1/sqrt(hidden) as PyTorch's RNNs."""
        bound = 1 / math.sqrt(self.hidden)
        for parameter in self.parameters(recurse=False):
            nn.init.uniform_(parameter, -bound, bound)

    @classmethod
    def build(cls, spec: ModelSpec) -> CellStack:
        return CellStack(cls, spec)

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Refuse, naming the flag, settings this cell does not take."""
        if spec.init is not None:
            raise SeqmnistError(f"--init is not for the {cls.name} cell (its modules initialise themselves)")
        refuse_options(cls.name, cls.takes, spec, (*CELL_OPTIONS, "state"))


def steps_of(cell: Cell, x: torch.Tensor) -> torch.Tensor:
    """The cell's outputs (batch, steps, hidden) by its step, one input at a time from a zero state."""
    state, outputs = x.new_zeros(len(x), cell.state_size()), []
    for x_t in x.unbind(1):
        state, h = cell.step(state, x_t)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


class CellStack(SequenceClassifier):
    """``spec.layers`` cells of one class, each reading the outputs of the one below, under a linear
    readout z_t = h_t V + c (the decoder) of the top cell's outputs."""

    readouts = readout_names()
    inits = ()

    def __init__(self, cell: type[Cell], spec: ModelSpec):
        super().__init__()
        self.spec, self.name, self.about = spec, cell.name, cell.about
        options = {name: getattr(spec, name) for name in cell.takes}
        widths = [spec.inputs] + [spec.hidden] * (spec.layers - 1)
        self.cells = nn.ModuleList(cell(width, spec.hidden, **options) for width in widths)
        self.decoder = nn.Linear(spec.hidden, spec.classes, bias=spec.bias)
        self.recurrent = tuple(f"cells.*.{name}" for name in cell.recurrent)
        self.parallel = type(self.cells[0]).sequence is not Cell.sequence

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        for cell in self.cells:
            x = cell.sequence(x) if fast else steps_of(cell, x)
        return self.decoder(x).transpose(0, 1)

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, fast=False)

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        return f"the {self.name} cell's parallel form, with autograd" if fast and self.parallel else AUTOGRAD_PATH

    def state_sizes(self) -> list[int]:
        return [cell.state_size() for cell in self.cells]

    def advance(self, x_t: torch.Tensor, state: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        after = []
        for cell, s in zip(self.cells, state, strict=True):
            s, x_t = cell.step(s, x_t)
            after.append(s)
        return after, self.decoder(x_t)

    def init_weights(self, draws) -> CellStack:
        """Every module's own ``reset_parameters``, the innermost first (so a cell's own choice for its
        modules stands), under a seed drawn from ``draws``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draws.seed())
            for child in self.children():
                _reset_innermost_first(child)
        return self


def _reset_innermost_first(module: nn.Module) -> None:
    for child in module.children():
        _reset_innermost_first(child)
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
