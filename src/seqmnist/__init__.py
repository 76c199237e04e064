"""seqmnist: classify MNIST digits with a recurrent network that reads the image as a sequence.

From Python::

    from seqmnist import MNIST, load_run
    data = MNIST.load()                      # $SEQMNIST_DATA, else a download cache
    trained = load_run("runs/seed-...")      # any run directory
    out = trained.read(data.test_x[:5])      # labels, probabilities, per-step traces

    from seqmnist import Config, build_model
    model = build_model(Config.from_settings(cell="lstm", hidden=128).model_spec())

A new cell: a :class:`Cell` (one layer's step), registered by name (docs/cells.md).
"""

from . import seed  # noqa: F401  (imported for its effect: it registers the seed's measure of accuracy)
from .cell import Cell
from .cells import ElementwiseRNN, GatedRNN, VanillaRNN  # importing seqmnist.cells registers every cell
from .config import PRESETS, Config
from .data import MNIST
from .errors import SeqmnistError
from .model import ModelSpec, build_model
from .readouts import get_readout, readout_names
from .registry import cell_names, get_cell, register_cell
from .runs import Run, TrainedModel, load_run
from .sequence import Sequencer

__all__ = [
    "MNIST",
    "PRESETS",
    "Cell",
    "Config",
    "ElementwiseRNN",
    "GatedRNN",
    "ModelSpec",
    "Run",
    "SeqmnistError",
    "Sequencer",
    "TrainedModel",
    "VanillaRNN",
    "build_model",
    "cell_names",
    "get_cell",
    "get_readout",
    "load_run",
    "readout_names",
    "register_cell",
]
