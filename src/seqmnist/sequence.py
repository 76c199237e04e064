"""How an image becomes a sequence: which pixels, in what order, how many per step, at what scale.

    rows       the first K rows, top to bottom, one row (28 pixels) per step: the seed's task
    pixel      all 784 pixels in reading order, P per step (P = 1: "sequential MNIST", 784 steps)
    permuted   all 784 pixels in a fixed permuted order, P per step ("permuted MNIST")

The permutation is named, so a run can say which one it used and rebuild it:
``random:SEED`` (NumPy's ``default_rng(SEED).permutation(784)``), or ``bitrev``, the
bit-reversal order that S4 (Gu et al. 2022) and its successors call pMNIST (the
bit-reversal permutation of 1,024 with the indices >= 784 left out, as their
``bitreversal_permutation``). Papers differ here: Le et al. 2015 and most RNN
papers since used a random permutation of their own, which was never published.

Pixel intensities are bytes / ``input_scale``: 255 is torchvision's ``ToTensor``,
256 what deeplearning.net's ``mnist.pkl.gz`` held, which the seed read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SeqmnistError

TASKS = ("rows", "pixel", "permuted")
SIDE = 28
PIXELS = SIDE * SIDE
_RANDOM = re.compile(r"random:(\d{1,18})")


def bitreversal_order(n: int = PIXELS) -> np.ndarray:
    """0..n-1 in bit-reversed order over the next power of two, the indices >= n left out."""
    bits = max(1, math.ceil(math.log2(n)))
    reversed_indices = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(1 << bits)]
    return np.array([i for i in reversed_indices if i < n], dtype=np.int64)


def permutation_order(name: str) -> np.ndarray:
    """The pixel order a permutation name stands for."""
    if name == "bitrev":
        return bitreversal_order()
    match = _RANDOM.fullmatch(name)
    if match is None:
        raise SeqmnistError(f"--permutation must be random:SEED or bitrev (got {name!r})")
    return np.random.default_rng(int(match[1])).permutation(PIXELS)


@dataclass(frozen=True)
class Sequencer:
    """Turns uint8 images (N, 28, 28) into float sequences (N, steps, pixels_per_step)."""

    task: str = "rows"
    rows: int = SIDE  # the rows task reads the first K rows
    pixels_per_step: int = SIDE
    permutation: str | None = None  # the permuted task's order, by name
    input_scale: int = 255
    saved_order: tuple[int, ...] | None = None  # the order a run saved, which wins over its name's

    @property
    def steps(self) -> int:
        if self.task == "rows":
            return self.rows
        return PIXELS // self.pixels_per_step

    @property
    def order(self) -> np.ndarray | None:
        """Pixel indices in the order they are read (None: reading order)."""
        if self.task != "permuted":
            return None
        return np.array(self.saved_order) if self.saved_order else permutation_order(self.permutation)

    def order_tensor(self) -> torch.Tensor | None:
        order = self.order
        return None if order is None else torch.from_numpy(order)

    def encode(self, images: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """Sequences of uint8 images (N, 28, 28); ``order`` (from :meth:`order_tensor`, made once by the
        caller) saves rebuilding the permutation for every call."""
        if order is None and self.task == "permuted":
            order = self.order_tensor()
        flat = images.reshape(len(images), PIXELS)
        if order is not None:
            flat = flat[:, order.to(flat.device)]
        read = self.steps * self.pixels_per_step
        x = flat[:, :read].to(torch.float32) / self.input_scale
        return x.view(len(images), self.steps, self.pixels_per_step)

    def describe(self) -> str:
        if self.task == "rows":
            return f"rows: {self.rows} steps of 28 pixels"
        pixels = "1 pixel" if self.pixels_per_step == 1 else f"{self.pixels_per_step} pixels"
        order = "in reading order" if self.task == "pixel" else f"permuted ({self.permutation})"
        return f"{self.task}: {self.steps} steps of {pixels} {order}"
