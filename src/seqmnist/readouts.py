"""Readouts: how a model's per-step logits z_t (steps, batch, classes) make one prediction.

    mean-softmax   argmax of the mean of softmax(z_t): the seed's; its loss is -log of that mean at the label
    mean-logits    argmax of the mean of z_t; cross-entropy of softmax(mean z_t)
    last           argmax of z_T: what the pixel-task papers do; cross-entropy of softmax(z_T)

Each is one object here: its scores, its loss, its running belief (for the step-by-step figures and
the web page) and the code the compiled engine knows it by. The engine exports its codes and
``seqmnist.engine`` refuses a library whose codes are not these, so the two languages cannot drift.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .errors import SeqmnistError


class Readout:
    """One readout; the logits are (steps, batch, classes)."""

    name: ClassVar[str]
    about: ClassVar[str]
    engine_code: ClassVar[int | None] = None  # engine.cpp's enum Readout; None: the engine has no loss for it
    averages_softmaxes: ClassVar[bool] = False  # its scores are the steps' mean softmax: the seed's measure applies
    running_is_step_softmax: ClassVar[bool] = False  # the belief after step t is softmax(z_t) itself

    def scores(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """What the prediction is the argmax of, (batch, classes); ``probs``, the logits' softmax,
        where the caller has it already."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean over the batch of the readout's loss."""
        return nn.functional.cross_entropy(self.scores(logits), y)

    def running(self, logits: torch.Tensor) -> torch.Tensor:
        """After every step t, the class probabilities the readout would give had the sequence ended
        there: (steps, batch, classes). Its argmax at the last step is the prediction."""
        raise NotImplementedError

    def stream(self, total: torch.Tensor, z_t: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`running` one step at a time, for a reader that never holds the whole sequence: the
        running total (batch, classes; zeros before the first step) after the step's logits z_t, and
        the belief after ``steps`` steps (batch, 1), this one included."""
        raise NotImplementedError


def _steps_so_far(logits: torch.Tensor) -> torch.Tensor:
    return torch.arange(1, len(logits) + 1, dtype=logits.dtype, device=logits.device)[:, None, None]


class MeanSoftmax(Readout):
    name = "mean-softmax"
    about = "the mean of the steps' softmaxes (the seed's)"
    engine_code = 0
    averages_softmaxes = True

    def scores(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        return (torch.softmax(logits, dim=-1) if probs is None else probs).mean(0)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return averaged_softmax_nll(self.scores(logits), y)

    def running(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1).cumsum(0) / _steps_so_far(logits)

    def stream(self, total: torch.Tensor, z_t: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = total + torch.softmax(z_t, dim=-1)
        return total, total / steps


class MeanLogits(Readout):
    name = "mean-logits"
    about = "the softmax of the steps' mean logits"
    engine_code = 2

    def scores(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        return logits.mean(0)

    def running(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.cumsum(0) / _steps_so_far(logits), dim=-1)

    def stream(self, total: torch.Tensor, z_t: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = total + z_t
        return total, torch.softmax(total / steps, dim=-1)


class Last(Readout):
    name = "last"
    about = "the last step's softmax (the final state's)"
    engine_code = 1
    running_is_step_softmax = True

    def scores(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        return logits[-1]

    def running(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)

    def stream(self, total: torch.Tensor, z_t: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return total, torch.softmax(z_t, dim=-1)


def averaged_softmax_nll(mean_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's cost: cross-entropy of the averaged probabilities, averaged over the batch."""
    return -torch.log(mean_probs.gather(1, labels[:, None])).mean()


_READOUTS: dict[str, Readout] = {readout.name: readout for readout in (MeanSoftmax(), MeanLogits(), Last())}


def get_readout(name: str) -> Readout:
    """The readout called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return _READOUTS[name]
    except (KeyError, TypeError):
        raise SeqmnistError(f"--readout must be one of {', '.join(_READOUTS)} (got {name!r})") from None


def readout_names() -> tuple[str, ...]:
    return tuple(_READOUTS)


def engine_readout_codes() -> dict[str, int]:
    """The engine's code of every readout it has a loss for, by name: what engine.cpp must export."""
    return {r.name: r.engine_code for r in _READOUTS.values() if r.engine_code is not None}
