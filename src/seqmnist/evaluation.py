"""Evaluation: the digits a model predicts for a set of sequences, its accuracy (its own, and every
registered measure's: seqmnist.measures) and the confusion matrix. Forward only, in chunks that keep
the buffers small whatever the sequence length; the training loop, the seed's experiments, the
figures and ``seqmnist evaluate`` all count this way."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from .config import Config
from .data import MNIST
from .measures import Measure, measure_columns, measures_for
from .model import NUM_CLASSES, SequenceClassifier
from .runs import Run


def step_logits(
    model: SequenceClassifier, x: torch.Tensor, definition: bool = False, progress: str | None = None
) -> Iterator[torch.Tensor]:
    """Per-step logits (steps, chunk, classes) for successive chunks of sequences x, forward only;
    with ``definition``, computed by the plain autograd definition alone."""
    size = model.eval_chunk()
    bar = tqdm(range(0, len(x), size), desc=progress, leave=False, disable=None if progress else True, unit="chunk")
    for i in bar:
        with torch.no_grad():
            logits = model.logits(x[i : i + size], fast=not definition)
        yield logits


def predicted_digits(
    model: SequenceClassifier,
    x: torch.Tensor,
    measures: Sequence[Measure] = (),
    definition: bool = False,
    progress: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Digits predicted for sequences x (N, steps, inputs) by the model's readout, and by each of
    ``measures`` (by name)."""
    ours: list[torch.Tensor] = []
    measured: dict[str, list[torch.Tensor]] = {m.name: [] for m in measures}
    for logits in step_logits(model, x, definition, progress):
        # The readout in float64: float32's softmax rounds by the CPU kernel ATen picks (AVX-512, AVX2),
        # so a near-tie could go either way on two machines whose training bits agree; in float64 none
        # did (0 of 3.6 million predictions moved against float32 here). All measures from one softmax.
        logits = logits.double()
        probs = torch.softmax(logits, dim=-1) if measures else None
        ours.append(model.readout.scores(logits, probs).argmax(1))
        for m in measures:
            measured[m.name].append(m.scores(probs).argmax(1))
    return torch.cat(ours), {name: torch.cat(digits) for name, digits in measured.items()}


def share_correct(predicted: torch.Tensor, y: torch.Tensor) -> float:
    """The share of predictions that are right."""
    return (predicted == y).float().mean().item()


def measured_shares(measured: dict[str, torch.Tensor], y: torch.Tensor, split: str, missing: float | None) -> dict:
    """Every registered measure's accuracy on one set (``split``: "train", "val", "test") by its key,
    ``missing`` for those that did not apply."""
    shares = {f"{split}_acc_{name}": share_correct(digits, y) for name, digits in measured.items()}
    return {key: shares.get(key, missing) for key in measure_columns(split)}


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor) -> list[list[int]]:
    """10 x 10 counts, rows = true digit, columns = predicted digit."""
    counts = torch.bincount(truth * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2)
    return counts.view(NUM_CLASSES, NUM_CLASSES).tolist()


def evaluate(
    model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, config: Config, progress: str | None = None
) -> dict:
    """Accuracy (the model's own, and every registered measure's: None where one does not apply) and
    the confusion matrix on sequences x with labels y."""
    ours, measured = predicted_digits(model, x, measures_for(config), config.run.compute == "definition", progress)
    return {
        "test_acc": share_correct(ours, y),
        **measured_shares(measured, y, "test", None),
        "confusion_matrix": confusion_matrix(y.cpu(), ours.cpu()),
    }


def evaluate_run(run: Run, config: Config, data: MNIST, best: bool = False) -> dict:
    """The test set's accuracy and confusion matrix for a run's final (or best-validation) model."""
    model = run.load_model(config, best)
    x = run.sequencer(config).encode(data.test_x)
    return evaluate(model, x, data.test_y, config, "test set")


def accuracy(
    model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, config: Config, split: str, progress: str | None
) -> dict[str, float]:
    """One set's accuracies in a metrics row (``split``: "train" or "val"): the model's own, and every
    registered measure's (NaN where one does not apply)."""
    ours, measured = predicted_digits(model, x, measures_for(config), config.run.compute == "definition", progress)
    return {f"{split}_acc": share_correct(ours, y), **measured_shares(measured, y, split, math.nan)}
