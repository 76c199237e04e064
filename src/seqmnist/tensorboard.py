"""TensorBoard event files of a training (``train --tensorboard DIR``, ``tensorboard = "DIR"`` in a grid
or search file): every epoch's loss, accuracies (each column of metrics.csv, so every registered measure
too), learning rate and a histogram of every weight, and at the end the settings as hyperparameters
beside the final results. A run writes into DIR/<its folder's name>, so a sweep's trials are runs that
TensorBoard shows side by side (``tensorboard --logdir DIR``), and a resumed run goes on in its folder.

The loop hears of none of this but :func:`event_writer`; torch.utils.tensorboard, which needs the optional
``tensorboard`` package, is imported only for a run that asks for events."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import IDENTITY, Config
from .errors import SeqmnistError
from .measures import measure_columns
from .runs import Run

# Each metrics.csv column's tag; the other columns are accuracies, tagged accuracy/<column>.
TAGS = {"train_loss": "loss/train_loss", "lr": "learning_rate/lr", "seconds": "time/seconds"}


def scalar_tag(column: str) -> str:
    """The tag of a metrics.csv column, in a section of its kind (TensorBoard groups tags by prefix)."""
    return TAGS.get(column, f"accuracy/{column}")


def summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SeqmnistError(
            "--tensorboard needs the tensorboard package: pip install 'seqmnist[tensorboard]'"
        ) from None
    return SummaryWriter


class EventWriter:
    """One run's event files, written as its epochs end (a listener of the training loop)."""

    def __init__(self, folder: Path, config: Config, model: torch.nn.Module):
        self.folder, self.config, self.model = folder, config, model
        self.summary_writer = summary_writer_class()
        self.writer = None

    def open(self, first_epoch: int):
        """The writer, opened at this session's first epoch: a run resumed mid-epoch trains that epoch
        again, so TensorBoard drops what an earlier session wrote from there on (purge_step)."""
        if self.writer is None:
            self.writer = self.summary_writer(str(self.folder), purge_step=first_epoch)
        return self.writer

    def epoch_ended(self, row: dict) -> None:
        epoch = int(row["epoch"])
        writer = self.open(epoch)
        for column, value in row.items():
            if column != "epoch" and not math.isnan(value):  # NaN: not measured that epoch
                writer.add_scalar(scalar_tag(column), value, epoch)
        for name, weights in self.model.named_parameters():
            writer.add_histogram(f"weights/{name}", weights.detach().cpu(), epoch)
        writer.flush()  # a run stopped at any instant keeps every finished epoch's events

    def finished(self, summary: dict) -> None:
        """The settings that make the run what it is, as hyperparameters, with its final results: the
        hparams dashboard's row of this run. Written into the run's own folder (run_name "."), not a
        subfolder, so each run stays one run in TensorBoard."""
        writer = self.open(summary["epochs"] + 1)
        hparams = {k: v for k, v in self.config.to_flat().items() if k in IDENTITY and v is not None}
        writer.add_hparams(hparams, final_results(summary), run_name=".", global_step=summary["epochs"])
        writer.close()


def final_results(summary: dict) -> dict[str, float]:
    """The summary's results as the hparams dashboard's metrics: test accuracy (the model's and each
    measure's), and the best-validation epoch's accuracies; tagged hparams/ so no epoch's tag repeats."""
    best = summary.get("best") or {}
    results = {key: summary.get(key) for key in ("test_acc", *measure_columns("test"))}
    results |= {f"best_{key}": best.get(key) for key in ("epoch", "val_acc", "test_acc")}
    results["minutes"] = summary.get("minutes")
    return {f"hparams/{key}": float(value) for key, value in results.items() if value is not None}


def event_writer(config: Config, run: Run, model: torch.nn.Module) -> EventWriter | None:
    """The run's event writer where its settings name a folder; the folder made now, before training."""
    if config.run.tensorboard is None:
        return None
    folder = Path(config.run.tensorboard) / run.dir.resolve().name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeqmnistError(
            f"--tensorboard {config.run.tensorboard}: cannot create {folder} ({exc.strerror or exc})"
        ) from None
    return EventWriter(folder, config, model)
