"""Every recurrent cell, one class each, registered by name as its module is imported (see
:mod:`seqmnist.registry`); ``import seqmnist`` imports this package, so each is known before use."""

from .elementwise import IRNN, ElementwiseRNN, IndRNN, ReluRNN, TanhRNN, VanillaRNN
from .gated import GRU, LSTM, GatedRNN
from .linear import LRU, S4D, LinearRecurrentClassifier

__all__ = [
    "GRU",
    "IRNN",
    "LRU",
    "LSTM",
    "S4D",
    "ElementwiseRNN",
    "GatedRNN",
    "IndRNN",
    "LinearRecurrentClassifier",
    "ReluRNN",
    "TanhRNN",
    "VanillaRNN",
]
