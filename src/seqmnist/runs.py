"""Run directories: the files one training leaves, written atomically and read back with checks.

    config.json             every setting of the run
    permutation.json        the permuted task's pixel order (what evaluate and predict read with)
    metrics.csv             one row per finished epoch
    checkpoint.safetensors  weights, optimizer state and loop position, one file so they never disagree
    best.safetensors        the weights of the epoch with the best validation accuracy so far
    model.safetensors       the final weights
    summary.json            test accuracy, confusion matrix, and the conditions the run ran under

A run is new (no config.json), unfinished (config.json, maybe a checkpoint) or
finished (a summary for as many epochs as its config asks for).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .config import Config
from .errors import SeqmnistError
from .files import check_tensors, read_json, read_tensors, save_tensors, write_csv, write_json
from .measures import measure_columns
from .model import SequenceClassifier, build_model
from .sequence import PIXELS, Sequencer


def metric_columns() -> tuple[str, ...]:
    """metrics.csv's columns: the model's own accuracies, then those of every registered measure
    (seqmnist.measures), NaN where one does not apply and in epochs without evaluation (Config.run.eval_every);
    lr is the learning rate of the epoch's last step."""
    return ("epoch", "train_loss", "train_acc", "val_acc", *measure_columns("train", "val"), "lr", "seconds")


CHECKPOINT_FORMAT = "seqmnist-checkpoint/3"
RUN_FILES = (
    "config.json",
    "permutation.json",
    "metrics.csv",
    "checkpoint.safetensors",
    "best.safetensors",
    "model.safetensors",
    "summary.json",
)


@dataclass
class Position:
    """Where the loop is: the next batch of the current epoch, and that epoch's running sums."""

    epoch: int = 1
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0  # time spent in this epoch by earlier sessions (a resumed epoch counts them)


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides the weights and the optimizer."""

    position: Position = field(default_factory=Position)
    metrics: list[dict] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)  # the conditions each process ran under
    best_val_acc: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False


class Run:
    """The files of one run directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.config = self.dir / "config.json"
        self.permutation = self.dir / "permutation.json"
        self.metrics = self.dir / "metrics.csv"
        self.checkpoint = self.dir / "checkpoint.safetensors"
        self.best = self.dir / "best.safetensors"
        self.model = self.dir / "model.safetensors"
        self.summary = self.dir / "summary.json"

    # --- status ---------------------------------------------------------------------------------

    def read_config(self) -> Config:
        """The run's settings; a path that is no run says so in words a user can act on, not as a
        missing config.json (the first file a user would never have heard of)."""
        if not self.dir.exists():
            raise SeqmnistError(f"{self.dir}: no such run directory")
        if not self.dir.is_dir():
            raise SeqmnistError(f"{self.dir}: a file, not a run directory")
        if not self.config.exists():
            raise SeqmnistError(
                f"{self.dir}: not a run directory (no config.json; runs are made by seqmnist train --out DIR)"
            )
        return Config.from_file(self.config)

    def start(self, config: Config) -> None:
        """The files a new run begins with: its settings, and the permuted task's pixel order."""
        write_json(self.config, config.to_dict())
        order = config.task.sequencer().order
        if order is not None:
            write_json(self.permutation, {"name": config.task.sequencer().permutation, "order": order.tolist()})

    def discard(self) -> None:
        """Remove what :meth:`start` and the first epochs wrote (a run that diverged at once)."""
        for path in (self.config, self.permutation, self.metrics, self.best):
            path.unlink(missing_ok=True)

    def finished_summary(self, config: Config) -> dict | None:
        """The summary when the run has trained all the epochs its config asks for (or stopped early),
        else None."""
        if not self.summary.exists():
            return None
        summary = read_json(self.summary)
        if not isinstance(summary, dict):
            return None
        return summary if summary.get("epochs") == config.recipe.epochs or summary.get("stopped_early") else None

    def sequencer(self, config: Config) -> Sequencer:
        """How this run turns images into sequences: its config's, with the pixel order it saved."""
        sequencer = config.task.sequencer()
        if sequencer.task != "permuted" or not self.permutation.exists():
            return sequencer
        saved = read_json(self.permutation)
        order = saved.get("order") if isinstance(saved, dict) else None
        whole = isinstance(order, list) and all(type(i) is int for i in order)  # JSON's integers, no bools
        if not whole or sorted(order) != list(range(PIXELS)):
            raise SeqmnistError(f"{self.permutation}: not a permutation of the 784 pixels")
        return replace(sequencer, saved_order=tuple(order))

    def describe_finished(self, summary: dict) -> str:
        return f"{self.dir} is a finished run ({summary['epochs']} epochs, test accuracy {summary['test_acc']:.4f})"

    # --- metrics --------------------------------------------------------------------------------

    def write_metrics(self, rows: list[dict]) -> None:
        write_csv(self.metrics, rows, metric_columns())

    def read_metrics(self) -> list[dict]:
        try:
            with open(self.metrics) as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != metric_columns():
                    raise ValueError(f"columns {reader.fieldnames}, expected {list(metric_columns())}")
                return [{k: float(v) for k, v in row.items()} for row in reader]
        except (OSError, ValueError, TypeError) as exc:
            raise SeqmnistError(f"{self.metrics}: not a readable metrics file ({exc})") from None

    # --- checkpoint -----------------------------------------------------------------------------

    def save_checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
        """Weights, optimizer state and loop state in one file (its format named in its header)."""
        tensors = {f"model.{name}": t for name, t in model.state_dict().items()}
        optim = optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for index, values in optim["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        payload = {"loop": asdict(state), "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars}}
        save_tensors(self.checkpoint, tensors, metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(payload)})

    def load_checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
        """Restore weights and optimizer from the checkpoint; return the loop state."""
        tensors, metadata = read_tensors(self.checkpoint)
        if metadata.get("format") != CHECKPOINT_FORMAT:
            made_by = metadata.get("format") or "an older seqmnist"
            raise SeqmnistError(
                f"{self.checkpoint}: checkpoint format {made_by!r} is not {CHECKPOINT_FORMAT!r}; train the run anew"
            )
        weights = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
        check_tensors(self.checkpoint, weights, model)
        try:
            payload = json.loads(metadata["state"])
            state = TrainingState(**{**payload["loop"], "position": Position(**payload["loop"]["position"])})
            optim = _optimizer_state(payload["optimizer"], tensors)
            if any(set(row) != set(metric_columns()) for row in state.metrics):
                raise ValueError("metrics of another layout")
            model.load_state_dict(weights)
            optimizer.load_state_dict(optim)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SeqmnistError(f"{self.checkpoint}: malformed training state ({exc})") from None
        return state

    # --- the final model ------------------------------------------------------------------------

    def save_model(self, model: torch.nn.Module) -> None:
        save_tensors(self.model, model.state_dict())

    def save_best(self, model: torch.nn.Module) -> None:
        save_tensors(self.best, model.state_dict())

    def load_weights(self, path: Path, model: SequenceClassifier) -> SequenceClassifier:
        tensors, _ = read_tensors(path)
        check_tensors(path, tensors, model)
        model.load_state_dict(tensors)
        return model

    def load_model(self, config: Config, best: bool = False) -> SequenceClassifier:
        """The run's final model (or, with ``best``, the best-validation one)."""
        path = self.best if best else self.model
        if not self.model.exists():
            hint = "; resume it with: seqmnist train --resume " + str(self.dir) if self.checkpoint.exists() else ""
            raise SeqmnistError(f"{self.model}: no final model (the run did not finish{hint})")
        if not path.exists():
            raise SeqmnistError(f"{path}: no best-validation weights in this run")
        return self.load_weights(path, build_model(config.model_spec()))

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary, summary)


def _optimizer_state(saved: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """An optimizer state_dict back from the checkpoint's JSON and tensors."""
    state: dict[int, dict] = {}
    for index, values in saved["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": saved["param_groups"]}


def round_accuracy(value: float | None, count: int) -> float | None:
    """An accuracy over ``count`` images to the digits that count resolves (1/10,000: 4 decimals), not
    float32's noise (0.49480000138282776 is 4,948 of 10,000)."""
    if value is None:
        return None
    return round(float(value), max(1, math.ceil(math.log10(max(count, 1)))))


def new_run(out: Path) -> Run:
    """A run directory that holds no earlier run, so an earlier result is never overwritten. It is
    checked now, before any work starts, and created by the first file written to it."""
    run = Run(out)
    if run.config.exists() or run.checkpoint.exists():
        config = Config.from_file(run.config) if run.config.exists() else None
        summary = run.finished_summary(config) if config else None
        if summary:
            raise SeqmnistError(
                f"{run.describe_finished(summary)}; train it further with: seqmnist train --resume {out} "
                f"--epochs N (N > {summary['epochs']}), or pick another --out"
            )
        raise SeqmnistError(f"{out}: already holds a run; continue it with: seqmnist train --resume {out}")
    _check_creatable(run.dir)
    return run


def _check_creatable(directory: Path) -> None:
    """Create ``directory`` (and any missing parents) and remove what was created: the only sure test
    that it can be made, which leaves nothing behind when what follows fails."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SeqmnistError(f"{directory}: exists and is not a directory; pick another --out") from None
    except OSError as exc:
        raise SeqmnistError(f"{directory}: cannot create the run directory ({exc.strerror or exc})") from None
    writable = os.access(directory, os.W_OK | os.X_OK)
    for created in missing:
        with contextlib.suppress(OSError):  # another trial of a sweep may have made it too, or filled it
            created.rmdir()
    if not writable:
        raise SeqmnistError(f"{directory}: the run directory is not writable")


def open_for_resume(directory: Path, epochs: int | None = None, **neutral: object) -> tuple[Run, Config]:
    """The run to continue and its settings. A finished run continues only with ``epochs`` beyond what
    it has trained; the new count, and new values of settings that do not change what it learns (config.NEUTRAL:
    a run trained on a GPU continues on the CPU, or the reverse), are recorded in its config.json once every
    check has passed, before any work starts."""
    run = Run(directory)
    saved = run.read_config()
    config = saved.replace(**neutral).validate() if neutral else saved
    summary = run.finished_summary(config)
    if epochs is None or epochs == config.recipe.epochs:
        if summary:
            raise SeqmnistError(
                f"{run.describe_finished(summary)}; to train it further: seqmnist train --resume {run.dir} "
                f"--epochs N (N > {summary['epochs']})"
            )
    else:
        done = len(run.read_metrics()) if run.metrics.exists() else 0
        if epochs < max(done, 1):
            raise SeqmnistError(f"--epochs {epochs}: {run.dir} has already trained {done} epochs")
        if summary and not run.checkpoint.exists():
            raise SeqmnistError(f"{run.dir}: no checkpoint to continue from (an imported model cannot be trained on)")
        config = config.replace(epochs=epochs).validate()
    if config != saved:
        write_json(run.config, config.to_dict())
    return run, config


@dataclass
class TrainedModel:
    """A run's model ready to use: its settings, weights and the way it reads an image."""

    run: Run
    config: Config
    model: SequenceClassifier
    sequencer: Sequencer

    def predict(self, image: str | Path | object) -> dict:
        """What the model makes of one image of a digit, as ``seqmnist predict`` reads it: a file's path,
        a PIL image or an array of any size (see mnistify.as_image), made to look like MNIST first. The
        label, the probabilities (10,) and the belief after every step (steps, 10)."""
        # Imported here: PIL is for pictures alone, and a process that only trains keeps its heap as it was.
        from .images import decode_image, read_image_file
        from .mnistify import as_image, mnist_like, to_gray

        if isinstance(image, (str, Path)):
            image = decode_image(read_image_file(Path(image)))
        pixels = mnist_like(to_gray(as_image(image)))
        out = self.read(torch.from_numpy(pixels)[None])
        probabilities, running = out["probabilities"][0], out["running"][:, 0]
        return {"label": int(out["labels"][0]), "probabilities": probabilities, "running": running}

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the model makes of uint8 images (N, 28, 28), MNIST's format: per-step logits and
        softmaxes (steps, N, 10), the readout's probabilities had the sequence ended after each step
        (steps, N, 10), and the final probabilities and labels (N, 10), (N,). Any other picture:
        :meth:`predict`."""
        if not isinstance(images, torch.Tensor) or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise SeqmnistError(f"read takes MNIST's images, a tensor (N, 28, 28) of bytes (got {shape}); "
                                "any other picture of a digit: predict")
        x = self.sequencer.encode(images.to(torch.uint8))
        logits = self.model.logits(x).double()  # the readout in float64, as evaluation's (evaluation.predicted_digits)
        running = self.model.readout.running(logits)
        return {
            "logits": logits,
            "step_probs": torch.softmax(logits, dim=-1),
            "running": running,
            "probabilities": running[-1],
            "labels": running[-1].argmax(1),
        }


def load_run(directory: Path | str, best: bool = False) -> TrainedModel:
    """A finished run (from ``train``, ``import-theano`` or a sweep) as a model ready to use:
    ``load_run("runs/seed").read(images)``. With ``best``, its best-validation weights."""
    run = Run(Path(directory))
    config = run.read_config()
    model = run.load_model(config, best)
    model.eval()
    return TrainedModel(run, config, model, run.sequencer(config))
