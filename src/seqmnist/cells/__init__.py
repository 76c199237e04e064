"""Every recurrent cell, one class each, registered by name as its module is imported (see
:mod:`seqmnist.registry`); ``import seqmnist`` imports this package, so each is known before use."""

from .elementwise import IRNN, ElementwiseRNN, IndRNN, ReluRNN, TanhRNN, VanillaRNN
from .gated import GRU, LSTM, GatedRNN

__all__ = ["GRU", "IRNN", "LSTM", "ElementwiseRNN", "GatedRNN", "IndRNN", "ReluRNN", "TanhRNN", "VanillaRNN"]
