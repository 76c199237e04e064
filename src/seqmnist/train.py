"""Training: settings, the loop, evaluation, checkpoints and run files.

A run directory holds:
  config.json          every setting of the run
  metrics.csv          one row per finished epoch (accuracies as this model reads and as the seed's code measured)
  checkpoint.safetensors  weights, optimizer state and loop position (in its metadata)
  model.safetensors    the final U, W, V in the seed's orientation
  summary.json         test accuracy and confusion matrix

Every file is replaced atomically, so a run killed at any instant can be
resumed from its last checkpoint. The order of the training images in epoch e
depends only on (seed, e), so a resumed run sees exactly the batches an
uninterrupted one would have seen.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import engine
from .data import MNIST
from .errors import SeqmnistError
from .files import load_tensors, read_json, save_tensors, write_json, write_text
from .model import NUM_CLASSES, VanillaRNN, averaged_softmax_nll, seed_code_readout

# *_as_seed: accuracy as the seed's code measured it (see seqmnist.model.seed_code_readout).
# Epochs without evaluation (see Config.eval_every) hold NaN accuracies.
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_acc", "train_acc_as_seed", "val_acc_as_seed", "seconds")


@dataclass
class Config:
    """Every setting of a run; the defaults are the seed's recipe."""

    preset: str = "seed"
    epochs: int = 100
    rows: int = 28
    hidden: int = 200
    lr: float = 0.01
    batch_size: int = 100
    seed: int = 12345
    subset: int | None = None
    engine: str = "fast"
    device: str = "auto"
    eval_every: int = 1  # accuracy on the training and validation sets every N epochs (always after the last)

    def validate(self) -> Config:
        """Reject bad settings before any work starts, naming the flag and its valid range."""
        checks = [
            ("--preset", self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
            ("--epochs", _is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("--rows", _is_int(self.rows) and 1 <= self.rows <= 28, "an integer in 1..28"),
            ("--hidden", _is_int(self.hidden) and 1 <= self.hidden <= 65536, "an integer in 1..65536"),
            ("--lr", _is_number(self.lr) and 0 < self.lr < math.inf, "a finite number > 0"),
            ("--batch-size", _is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("--seed", _is_int(self.seed) and 0 <= self.seed < 2**63, "an integer in 0..2^63-1"),
            ("--subset", self.subset is None or (_is_int(self.subset) and self.subset >= 1), "an integer >= 1"),
            ("--engine", self.engine in ENGINES, f"one of {', '.join(ENGINES)}"),
            ("--device", self.device in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
            ("--eval-every", _is_int(self.eval_every) and self.eval_every >= 1, "an integer >= 1"),
        ]
        for flag, ok, valid in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise SeqmnistError(f"{flag} must be {valid} (got {value!r})")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SeqmnistError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
        return self

    @classmethod
    def from_settings(cls, preset: str = "seed", **overrides: object) -> Config:
        """The preset's settings, then every override that is not None."""
        if preset not in PRESETS:
            raise SeqmnistError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
        settings = {**PRESETS[preset], "preset": preset}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings).validate()

    @classmethod
    def from_file(cls, path: Path) -> Config:
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise SeqmnistError(f"{path}: not a seqmnist run configuration")
        try:
            return cls(**data).validate()
        except SeqmnistError as exc:
            raise SeqmnistError(f"{path}: {exc}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


# Presets are named sets of settings; flags given on the command line win over them.
PRESETS: dict[str, dict[str, object]] = {
    "seed": {},  # the 2016 presentation's recipe: the Config defaults
    "quick": {"epochs": 3, "subset": 10000, "lr": 0.1},  # a first look in seconds
}
ENGINES = ("fast", "autograd")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) alone, so resuming needs no RNG state."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def make_loss(config: Config, model: VanillaRNN) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.engine == "fast":
        ws = engine.Workspace()
        return lambda x, y: engine.seed_loss(ws, x, y, model.U, model.W, model.V)
    return lambda x, y: averaged_softmax_nll(model(x), y)


def predict(model: VanillaRNN, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits predicted for images x (N, 28, 28) from their first ``rows`` rows, in one forward pass:
    the model's predictions, and the ones the seed's code measured accuracy with."""
    ours, as_seed = [], []
    for probs in engine.probs_by_chunk(model.U, model.W, model.V, x[:, :rows]):
        ours.append(probs.mean(0).argmax(1))
        as_seed.append(seed_code_readout(probs).argmax(1))
    return torch.cat(ours), torch.cat(as_seed)


def share_correct(predicted: torch.Tensor, y: torch.Tensor) -> float:
    return (predicted == y).float().mean().item()


def accuracy(model: VanillaRNN, x: torch.Tensor, y: torch.Tensor, rows: int) -> tuple[float, float]:
    """Accuracy of the model, and as the seed's code measured it."""
    ours, as_seed = predict(model, x, rows)
    return share_correct(ours, y), share_correct(as_seed, y)


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor) -> list[list[int]]:
    """10 x 10 counts, rows = true digit, columns = predicted digit."""
    counts = torch.bincount(truth * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2)
    return counts.view(NUM_CLASSES, NUM_CLASSES).tolist()


class Interrupt:
    """Turns SIGINT and SIGTERM into a flag the loop checks between batches."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> Interrupt:
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@dataclass
class Position:
    """Where the loop is: the next batch of the current epoch, and that epoch's running sums."""

    epoch: int = 1
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0


class Run:
    """The files of one run directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.config = self.dir / "config.json"
        self.metrics = self.dir / "metrics.csv"
        self.checkpoint = self.dir / "checkpoint.safetensors"
        self.model = self.dir / "model.safetensors"
        self.summary = self.dir / "summary.json"

    def write_metrics(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics, buffer.getvalue())

    def read_metrics(self) -> list[dict]:
        try:
            with open(self.metrics) as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != METRIC_COLUMNS:
                    raise ValueError(f"columns {reader.fieldnames}, expected {list(METRIC_COLUMNS)}")
                return [{k: float(v) for k, v in row.items()} for row in reader]
        except (OSError, ValueError, TypeError) as exc:
            raise SeqmnistError(f"{self.metrics}: not a readable metrics file ({exc})") from None

    def save_checkpoint(self, model: VanillaRNN, position: Position, metrics: list[dict]) -> None:
        # One file holds weights and loop state together, so they can never disagree.
        state = {"position": asdict(position), "metrics": metrics}
        tensors = {name: p for name, p in model.named_parameters()}
        save_tensors(self.checkpoint, tensors, metadata={"state": json.dumps(state)})

    def load_checkpoint(self, model: VanillaRNN) -> tuple[Position, list[dict]]:
        tensors, metadata = load_tensors(self.checkpoint, model.shapes(), with_metadata=True)
        try:
            state = json.loads(metadata["state"])
            position = Position(**state["position"])
            metrics = list(state["metrics"])
        except (KeyError, TypeError, ValueError):
            raise SeqmnistError(f"{self.checkpoint}: missing or malformed training state") from None
        if any(set(row) != set(METRIC_COLUMNS) for row in metrics):
            raise SeqmnistError(f"{self.checkpoint}: made by an older seqmnist (other metrics); train the run anew")
        model.load_state_dict(tensors)
        return position, metrics

    def load_model(self, config: Config) -> VanillaRNN:
        if not self.model.exists():
            hint = "; resume it with: seqmnist train --resume " + str(self.dir) if self.checkpoint.exists() else ""
            raise SeqmnistError(f"{self.model}: no final model (the run did not finish{hint})")
        model = VanillaRNN(config.hidden)
        model.load_state_dict(load_tensors(self.model, model.shapes()))
        return model


def evaluate_test(model: VanillaRNN, data: MNIST, rows: int) -> dict:
    ours, as_seed = predict(model, data.test_x, rows)
    return {
        "test_acc": share_correct(ours, data.test_y),
        "test_acc_as_seed": share_correct(as_seed, data.test_y),
        "confusion_matrix": confusion_matrix(data.test_y.cpu(), ours.cpu()),
    }


def format_epoch(row: dict, epochs: int) -> str:
    line = f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
    if not math.isnan(row["train_acc"]):
        line += (
            f"train_acc {row['train_acc']:.4f}  val_acc {row['val_acc']:.4f} "
            f"(as the seed measured {row['val_acc_as_seed']:.4f})  "
        )
    return line + f"{row['seconds']:.1f}s"


def new_run(out: Path) -> Run:
    """A run directory that holds no earlier run: an earlier result is never overwritten."""
    run = Run(out)
    if run.config.exists() or run.checkpoint.exists():
        raise SeqmnistError(f"{out}: already holds a run; resume it with --resume {out}, or pick another --out")
    return run


def train(
    config: Config,
    data: MNIST,
    run: Run,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or continue training) the run in ``run.dir``; return its summary."""
    if not resume:
        write_json(run.config, asdict(config))
    device = pick_device(config.device)
    data = (data.subset(config.subset) if config.subset else data).to(device)
    model = VanillaRNN(config.hidden).reset_parameters(config.seed)
    position, metrics = Position(), []
    if resume and run.checkpoint.exists():
        position, metrics = run.load_checkpoint(model)
        log(f"resuming {run.dir} at epoch {position.epoch}, batch {position.batch}")
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = make_loss(config, model)
    batches = math.ceil(len(data.train_x) / config.batch_size)

    with Interrupt() as interrupt:
        while position.epoch <= config.epochs:
            started = time.perf_counter()
            train_batches(config, data, loss_fn, optimizer, position, interrupt)
            if not math.isfinite(position.loss_sum):
                kept = f"{run.checkpoint} keeps the last good state" if run.checkpoint.exists() else "nothing saved"
                raise SeqmnistError(
                    f"training diverged in epoch {position.epoch} (loss is {position.loss_sum}); "
                    f"{kept}; try a smaller --lr"
                )
            if position.batch == batches:
                evaluate = position.epoch % config.eval_every == 0 or position.epoch == config.epochs
                metrics.append(epoch_metrics(model, data, config.rows, position, started, evaluate))
                log(format_epoch(metrics[-1], config.epochs))
                run.write_metrics(metrics)
                position = Position(epoch=position.epoch + 1)
            run.save_checkpoint(model, position, metrics)
            if interrupt.signal is not None:
                raise TrainingInterrupted(
                    interrupt.signal,
                    f"{signal.Signals(interrupt.signal).name}: stopped at epoch {position.epoch}, "
                    f"batch {position.batch}/{batches}; checkpoint saved; "
                    f"continue with: seqmnist train --resume {run.dir}",
                )
    return finish(model, data, config, run, metrics, log)


def train_batches(
    config: Config,
    data: MNIST,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    position: Position,
    interrupt: Interrupt,
) -> None:
    """SGD over the rest of the current epoch, advancing ``position``; stops early on a signal."""
    n = len(data.train_x)
    batches = math.ceil(n / config.batch_size)
    order = epoch_order(config.seed, position.epoch, n).to(data.train_x.device)
    # Summed on the device and read once per epoch: no synchronisation per batch.
    loss_sum = torch.tensor(position.loss_sum, dtype=torch.float64, device=data.train_x.device)
    bar = tqdm(
        range(position.batch, batches),
        desc=f"epoch {position.epoch}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=None,
        initial=position.batch,
        total=batches,
    )
    for b in bar:
        index = order[b * config.batch_size : (b + 1) * config.batch_size]
        loss = loss_fn(data.train_x[index, : config.rows], data.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        position.seen += len(index)
        position.batch = b + 1
        if interrupt.signal is not None:
            break
    bar.close()
    position.loss_sum = loss_sum.item()


def epoch_metrics(
    model: VanillaRNN, data: MNIST, rows: int, position: Position, started: float, evaluate: bool = True
) -> dict:
    """The row of metrics.csv: accuracy on the whole training and validation sets, as the seed did after
    every epoch, in both measures (NaN when ``evaluate`` is off)."""
    nan = (math.nan, math.nan)
    train_acc = accuracy(model, data.train_x, data.train_y, rows) if evaluate else nan
    val_acc = accuracy(model, data.val_x, data.val_y, rows) if evaluate else nan
    return {
        "epoch": position.epoch,
        "train_loss": position.loss_sum / position.seen,
        "train_acc": train_acc[0],
        "val_acc": val_acc[0],
        "train_acc_as_seed": train_acc[1],
        "val_acc_as_seed": val_acc[1],
        "seconds": time.perf_counter() - started,
    }


def finish(model: VanillaRNN, data: MNIST, config: Config, run: Run, metrics: list[dict], log: Callable) -> dict:
    """Test the model, then write the final model file and the summary."""
    summary = {"epochs": config.epochs, **evaluate_test(model, data, config.rows)}
    if metrics:
        summary.update({k: metrics[-1][k] for k in ("train_acc", "val_acc", "train_acc_as_seed", "val_acc_as_seed")})
    save_tensors(run.model, dict(model.named_parameters()))
    write_json(run.summary, summary)
    log(f"test accuracy {summary['test_acc']:.4f} (as the seed measured {summary['test_acc_as_seed']:.4f}) ({run.dir})")
    return summary
