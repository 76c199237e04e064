"""The seed's model: a bias-free vanilla RNN whose per-row softmaxes are averaged.

    s_t = tanh(x_t U + s_{t-1} W),   s_0 = 0
    o_t = softmax(s_t V)
    p   = mean_t o_t                 (over the rows read)
    prediction = argmax p

The weights keep the seed's orientation (``x_t @ U``), so a saved model can be
recomputed with NumPy from ``U`` (inputs x hidden), ``W`` (hidden x hidden) and
``V`` (hidden x classes). This module is the plain autograd definition; the
fast path in :mod:`seqmnist.engine` must agree with it.

The seed's published accuracies were not measured with this readout: see
:func:`seed_code_readout`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

INPUT_SIZE = 28
NUM_CLASSES = 10


class VanillaRNN(nn.Module):
    def __init__(self, hidden_size: int = 200, input_size: int = INPUT_SIZE, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.U = nn.Parameter(torch.empty(input_size, hidden_size))
        self.W = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.V = nn.Parameter(torch.empty(hidden_size, num_classes))

    @property
    def hidden_size(self) -> int:
        return self.W.shape[0]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.named_parameters()}

    def reset_parameters(self, seed: int) -> VanillaRNN:
        """Uniform in +-1/sqrt(fan_in) per matrix, U then W then V from one torch.Generator."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in (self.U, self.W, self.V):
                bound = 1.0 / math.sqrt(p.shape[0])
                p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
        return self

    def draw_as_the_seed(self, stream: np.random.RandomState) -> VanillaRNN:
        """The seed's own draws (layer.py): uniform in +-sqrt(1/fan_in), U then V then W, from NumPy's
        legacy stream, float64 cast to float32. After np.random.seed(12345) these are its weights."""
        with torch.no_grad():
            for p in (self.U, self.V, self.W):
                bound = np.sqrt(1.0 / p.shape[0])
                p.copy_(torch.from_numpy(stream.uniform(-bound, bound, tuple(p.shape)).astype(np.float32)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The seed's readout: the mean of the per-row softmaxes, (batch, 10)."""
        return rnn_step_probs(self.U, self.W, self.V, x).mean(0)


def rnn_step_probs(U: torch.Tensor, W: torch.Tensor, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Softmax after every row: x (batch, rows, 28) -> (rows, batch, 10)."""
    s = x.new_zeros(x.shape[0], W.shape[0])
    probs = []
    for t in range(x.shape[1]):
        s = torch.tanh(x[:, t] @ U + s @ W)
        probs.append(torch.softmax(s @ V, dim=-1))
    return torch.stack(probs)


def averaged_softmax_nll(mean_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's cost: cross-entropy of the averaged probabilities, averaged over the batch."""
    return -torch.log(mean_probs.gather(1, labels[:, None])).mean()


def seed_code_readout(step_probs: torch.Tensor) -> torch.Tensor:
    """The readout the seed's code *measured accuracy with*: the last row's softmax replaced by a uniform one.

    The seed's Theano accuracy function (``layer.py`` in github.com/juliuswang0728/rnn_theano)
    lists the state variable among its inputs and is called with zeros for it,
    meant as the initial state. But by then that variable names the state after the
    last row, so Theano substitutes the zeros there: the last row's softmax becomes
    softmax(0) = 1/10 for every digit and the prediction rests on the other rows.
    Training and the confusion matrices used the full readout. This explains the
    seed's numbers: its K = 28 confusion matrix has 96.41% on its diagonal but its
    reported test accuracy is 96.07%, and at K = 2 (the first row is blank in
    almost every image, so the softmaxes tie and argmax says 0) it reports the share
    of zeros in each set, to within one image. ``step_probs`` is (rows, batch, classes).
    """
    uniform = torch.full_like(step_probs[0], 1.0 / step_probs.shape[-1])
    return (step_probs[:-1].sum(0) + uniform) / step_probs.shape[0]
