"""The cell registry: every recurrent cell is one class, registered under the name ``--cell`` takes.

As torchvision builds any model from its name, :func:`seqmnist.model.build_model` builds a cell from
``get_cell(spec.cell)``; the CLI's choices, ``bench --all`` and the tests' parametrisation come from
:func:`cell_names`. A new cell needs no edit elsewhere: define the class, decorate it with
``@register_cell("name")``. This module imports nothing that registers in it (``seqmnist.cells``
does, and the package imports that before any use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import SeqmnistError

Cell = TypeVar("Cell", bound=type)

_CELLS: dict[str, type] = {}


def register_cell(name: str) -> Callable[[Cell], Cell]:
    """Class decorator: the cell class answers to ``name`` (also set as its ``name`` attribute)."""

    def register(cls: Cell) -> Cell:
        if name in _CELLS:
            raise SeqmnistError(f"a cell named {name!r} is registered already ({_CELLS[name].__qualname__})")
        cls.name = name
        _CELLS[name] = cls
        return cls

    return register


def get_cell(name: str) -> type:
    """The class registered as ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return _CELLS[name]
    except (KeyError, TypeError):
        raise SeqmnistError(f"--cell must be one of {', '.join(_CELLS)} (got {name!r})") from None


def cell_names() -> tuple[str, ...]:
    """Every registered cell's name, in the order of registration."""
    return tuple(_CELLS)


def init_names() -> tuple[str, ...]:
    """Every initialisation some registered cell takes, each once, in the order first met."""
    return tuple(dict.fromkeys(init for cls in _CELLS.values() for init in cls.inits))
