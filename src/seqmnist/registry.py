"""The cell registry: every recurrent cell is one class, found by the name ``--cell`` takes.

As torchvision builds any model from its name, :func:`seqmnist.model.build_model` builds a cell from
``get_cell(spec.cell)``; the CLI's choices, ``bench --all`` and the tests' parametrisation come from
:func:`cell_names`. A cell comes from one of three places, and needs no edit of the package:

* a class decorated with ``@register_cell("name")`` in a module already imported (seqmnist.cells'
  own, which the package imports before any use);
* an installed package's entry point in the group ``seqmnist.cells`` (``name = "module:Class"``), loaded
  the first time the names are asked for;
* ``module.path:ClassName`` given as the name itself: the module is imported (from the current folder
  or PYTHONPATH) when the name is first asked for, so a run whose config.json names it imports it again.

This module imports nothing that registers in it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from .errors import SeqmnistError

Cell = TypeVar("Cell", bound=type)
ENTRY_POINTS = "seqmnist.cells"

_CELLS: dict[str, type] = {}
_IMPORTED: dict[str, type] = {}  # module.path:ClassName -> the class (not listed among the names)
_entry_points_loaded = False


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
    """The class ``name`` stands for; an unknown name, or a module that cannot be imported, is a one-line
    error saying which cells there are and how to name one of one's own."""
    if not isinstance(name, str):
        raise SeqmnistError(f"--cell must be a cell's name (got {name!r})")
    if ":" in name:
        if name not in _IMPORTED:
            _IMPORTED[name] = _import_cell(name)
        return _IMPORTED[name]
    if name not in _CELLS:
        _load_entry_points()
    if name not in _CELLS:
        raise SeqmnistError(
            f"--cell must be one of {', '.join(_CELLS)}, or module.path:ClassName for a cell of your own "
            f"(got {name!r}; a cell from an installed package appears once it is installed)"
        )
    return _CELLS[name]


def cell_names() -> tuple[str, ...]:
    """Every registered cell's name (entry points' included), in the order of registration."""
    _load_entry_points()
    return tuple(_CELLS)


def init_names() -> tuple[str, ...]:
    """Every initialisation some registered cell takes, each once, in the order first met."""
    return tuple(dict.fromkeys(init for cls in _CELLS.values() for init in cls.inits))


def _import_cell(name: str) -> type:
    """The class ``module.path:ClassName`` names, its module imported from PYTHONPATH or the current folder."""
    module_name, _, class_name = name.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: a cell file beside the user is found
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the module itself fails: either way the user's to fix
        raise SeqmnistError(
            f"--cell {name}: cannot import {module_name} ({type(exc).__name__}: {exc}); it must be installed, "
            "on PYTHONPATH or in the current folder"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and callable(getattr(cls, "build", None)) and callable(getattr(cls, "check", None))):
        raise SeqmnistError(f"--cell {name}: {module_name} has no cell class {class_name} (a seqmnist.Cell)")
    if not isinstance(getattr(cls, "name", None), str):  # not registered under a name of its own
        cls.name = name
    return cls


def _load_entry_points() -> None:
    """Register every installed package's cells (the group seqmnist.cells), once; one that cannot be
    loaded is a warning, not the end of every command."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if entry.name in _CELLS:
            continue
        try:
            cls = entry.load()
        except Exception as exc:
            print(f"seqmnist: warning: the cell {entry.name} ({entry.value}) cannot be loaded: {exc}", file=sys.stderr)
            continue
        if entry.name not in _CELLS:  # its module may have registered it by itself
            register_cell(entry.name)(cls)
