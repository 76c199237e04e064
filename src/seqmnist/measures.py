"""Accuracies measured beside the model's own: a small registry that training and evaluation read.

A study may need a run's accuracy measured the way another code measured it: the seed's code, for
one, measured accuracy with a readout other than the one it trained (see :mod:`seqmnist.seed`, which
registers that measure here). A registered measure is evaluated, logged and recorded wherever it
applies without the loop knowing it by name: metrics.csv holds its ``train_acc_NAME`` and
``val_acc_NAME`` (NaN where it does not apply), a summary its ``test_acc_NAME`` (None where it does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import Config


def _nothing_logged(config: Config) -> dict[int, dict]:
    return {}


@dataclass(frozen=True)
class Measure:
    """An accuracy measured another way than the model's readout."""

    name: str  # its columns: train_acc_NAME, val_acc_NAME, test_acc_NAME
    label: str  # the words after its number in a log line ("0.9607 as the seed's code measured")
    applies: Callable[[Config], bool]  # whether a run with these settings is measured so
    # Per-step probabilities (steps, N, classes), float64, to the scores (N, classes) whose argmax it counts.
    scores: Callable[[torch.Tensor], torch.Tensor]
    # An epoch's line: (the metrics row, the logged reference for that epoch or None) to the words that
    # precede the model's own accuracy; "" to add none.
    epoch_note: Callable[[dict, dict | None], str]
    # The accuracies by epoch that a run with these settings is held to (a published training log), or {}.
    reference: Callable[[Config], dict[int, dict]] = _nothing_logged


MEASURES: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    MEASURES[measure.name] = measure
    return measure


def measures_for(config: Config) -> list[Measure]:
    """The registered measures that apply to a run with these settings."""
    return [m for m in MEASURES.values() if m.applies(config)]


def measure_columns(*sets: str) -> list[str]:
    """The registered measures' accuracy keys for these sets ("train", "val", "test"), measure by measure."""
    return [f"{name}_acc_{measure}" for measure in MEASURES for name in sets]


def measured_words(result: dict) -> list[str]:
    """Each measure whose test accuracy ``result`` (an evaluation, a summary) holds, in words:
    "0.9607 as the seed's code measured"."""
    values = {m: result.get(f"test_acc_{m.name}") for m in MEASURES.values()}
    return [f"{value:.4f} {m.label}" for m, value in values.items() if value is not None]
