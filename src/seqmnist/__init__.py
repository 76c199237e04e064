"""seqmnist: classify MNIST digits with a recurrent network that reads the image as a sequence.

From Python::

    from seqmnist import MNIST, load_run
    data = MNIST.load()                      # $SEQMNIST_DATA, else a download cache
    trained = load_run("runs/seed-...")      # any run directory
    out = trained.read(data.test_x[:5])      # labels, probabilities, per-step traces

    from seqmnist import Config, build_model
    model = build_model(Config.from_settings(cell="lstm", hidden=128).model_spec())
"""

from .config import PRESETS, Config
from .data import MNIST
from .errors import SeqmnistError
from .model import CELLS, READOUTS, ElementwiseRNN, GatedRNN, ModelSpec, VanillaRNN, build_model
from .runs import Run, TrainedModel, load_run
from .sequence import Sequencer

__all__ = [
    "CELLS",
    "MNIST",
    "PRESETS",
    "READOUTS",
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
    "load_run",
]
