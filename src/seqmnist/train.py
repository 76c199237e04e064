"""Training: the loop, evaluation and the run's files as it goes.

Every file is replaced atomically, so a run killed at any instant can be
resumed from its last checkpoint; the order of the training images in every
epoch is a function of the run's settings alone (replayed from the start on
resume), so a resumed run sees exactly the batches an uninterrupted one would
have seen.
"""

from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import engine
from .config import Config
from .data import MNIST
from .errors import SeqmnistError
from .files import write_json
from .model import NUM_CLASSES, VanillaRNN, averaged_softmax_nll, rnn_step_probs, seed_code_readout
from .runs import Position, Run, TrainingState
from .seed import seed_log
from .sequence import Sequencer

Log = Callable[[str], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sequencer(config: Config) -> Sequencer:
    return Sequencer(task="rows", rows=config.rows, input_scale=config.input_scale)


# --- where the randomness comes from ------------------------------------------------------------


def initial_model(config: Config) -> tuple[VanillaRNN, Iterator[np.ndarray]]:
    """The model's initial weights and the orders of the training images, epoch 1 onwards (config.rng)."""
    model = VanillaRNN(config.hidden)
    n = config.train_images
    if config.rng == "seed":
        stream = np.random.RandomState(config.seed)  # np.random.seed(seed), as layer.py
        return model.draw_as_the_seed(stream), _cumulative_orders(stream, n)
    return model.reset_parameters(config.seed), (_fresh_order(config.seed, e, n) for e in itertools.count(1))


def _cumulative_orders(stream: np.random.RandomState, n: int) -> Iterator[np.ndarray]:
    """The seed's shuffle: X = X[np.random.permutation(len(X))] every epoch, each permutation applied
    to the previous epoch's order."""
    order = np.arange(n)
    while True:
        order = order[stream.permutation(n)]
        yield order


def _fresh_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


# --- evaluation --------------------------------------------------------------------------------


def step_probs(
    model: VanillaRNN, x: torch.Tensor, definition: bool = False, progress: str | None = None, chunk: int = 1000
) -> Iterator[torch.Tensor]:
    """Per-step softmaxes (steps, chunk, classes) for successive chunks of x, forward only; with
    ``definition``, computed by the plain autograd definition instead of the fast engine."""
    if definition:
        chunks = (rnn_step_probs(model.U, model.W, model.V, x[i : i + chunk]) for i in range(0, len(x), chunk))
    else:
        chunks = engine.probs_by_chunk(model.U, model.W, model.V, x, chunk)
    bar = tqdm(chunks, desc=progress, total=-(-len(x) // chunk), leave=False, disable=None if progress else True)
    for probs in bar:
        yield probs.detach()


def predict(
    model: VanillaRNN, x: torch.Tensor, definition: bool = False, progress: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits predicted for sequences x (N, steps, inputs) in one forward pass: the model's
    predictions, and the ones the seed's code measured accuracy with."""
    ours, as_seed = [], []
    with torch.no_grad():
        for probs in step_probs(model, x, definition, progress):
            ours.append(probs.mean(0).argmax(1))
            as_seed.append(seed_code_readout(probs).argmax(1))
    return torch.cat(ours), torch.cat(as_seed)


def share_correct(predicted: torch.Tensor, y: torch.Tensor) -> float:
    return (predicted == y).float().mean().item()


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor) -> list[list[int]]:
    """10 x 10 counts, rows = true digit, columns = predicted digit."""
    counts = torch.bincount(truth * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2)
    return counts.view(NUM_CLASSES, NUM_CLASSES).tolist()


def evaluate(model: VanillaRNN, x: torch.Tensor, y: torch.Tensor, config: Config, progress: str | None = None):
    """Accuracy in both measures and the confusion matrix on sequences x with labels y."""
    ours, as_seed = predict(model, x, config.engine == "autograd", progress)
    return {
        "test_acc": share_correct(ours, y),
        "test_acc_as_seed": share_correct(as_seed, y),
        "confusion_matrix": confusion_matrix(y.cpu(), ours.cpu()),
    }


def evaluate_test(model: VanillaRNN, data: MNIST, config: Config) -> dict:
    """The test set's accuracy and confusion matrix for a run's model."""
    return evaluate(model, sequencer(config).encode(data.test_x), data.test_y, config, "test set")


# --- signals -----------------------------------------------------------------------------------


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
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + signal.

    Both arguments reach Exception.args, so it pickles (a worker process can raise it to its parent)."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum, message)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- the loop ----------------------------------------------------------------------------------


def session() -> dict:
    """The conditions this process trains under: results are byte-identical only when they agree."""
    return {
        "threads": torch.get_num_threads(),
        "engine": "compiled" if engine.native_loops() is not None else "python loops",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def train(config: Config, data: MNIST, run: Run, resume: bool = False, log: Log = print) -> dict:
    """Train (or continue training) the run in ``run.dir``; return its summary."""
    if not resume:
        write_json(run.config, config.to_dict())
    device = pick_device(config.device)
    data = (data.subset(config.subset) if config.subset else data).to(device)
    model, orders = initial_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    state = TrainingState()
    if resume and run.checkpoint.exists():
        state = run.load_checkpoint(model, optimizer)
        log(f"resuming {run.dir} at epoch {state.position.epoch}, batch {state.position.batch}")
    state.sessions.append({**session(), "device": str(device), "from_epoch": state.position.epoch})
    orders = itertools.islice(orders, state.position.epoch - 1, None)
    model.to(device)
    loss_fn = make_loss(config, model)
    sets = {name: (sequencer(config).encode(x), y) for name, x, y in data.labelled_sets()}
    reference = seed_log(config)

    with Interrupt() as interrupt:
        while state.position.epoch <= config.epochs:
            position = state.position
            started = time.perf_counter() - position.seconds
            order = torch.from_numpy(next(orders)).to(device)
            train_batches(config, *sets["train"], order, loss_fn, optimizer, position, interrupt)
            if not math.isfinite(position.loss_sum):
                raise diverged(run, position)
            if position.batch == config.batches:
                evaluate = position.epoch % config.eval_every == 0 or position.epoch == config.epochs
                state.metrics.append(epoch_metrics(model, sets, config, position, started, evaluate))
                log(format_epoch(state.metrics[-1], config.epochs, reference.get(position.epoch)))
                run.write_metrics(state.metrics)
                state.position = Position(epoch=position.epoch + 1)
            else:
                position.seconds = time.perf_counter() - started
            run.save_checkpoint(model, optimizer, state)
            if interrupt.signal is not None:
                raise TrainingInterrupted(
                    interrupt.signal,
                    f"{signal.Signals(interrupt.signal).name}: stopped at epoch {state.position.epoch}, "
                    f"batch {state.position.batch}/{config.batches}; checkpoint saved; "
                    f"continue with: seqmnist train --resume {run.dir}",
                )
    return finish(model, sets["test"], config, run, state, log)


def make_loss(config: Config, model: VanillaRNN) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.engine == "fast":
        ws = engine.Workspace()
        return lambda x, y: engine.seed_loss(ws, x, y, model.U, model.W, model.V)
    return lambda x, y: averaged_softmax_nll(model(x), y)


def diverged(run: Run, position: Position) -> SeqmnistError:
    """The error for a NaN or infinite loss. Without a checkpoint nothing worth keeping exists, so the
    run's files go and the same --out can be used again."""
    if run.checkpoint.exists():
        kept = f"{run.checkpoint} keeps the last good state"
    else:
        for path in (run.config, run.metrics):
            path.unlink(missing_ok=True)
        kept = "nothing was kept, so the same --out can be used again"
    return SeqmnistError(
        f"training diverged in epoch {position.epoch} (loss is {position.loss_sum}); {kept}; try a smaller --lr"
    )


def train_batches(
    config: Config,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    position: Position,
    interrupt: Interrupt,
) -> None:
    """SGD over the rest of the current epoch, advancing ``position``; stops early on a signal."""
    # Summed on the device and read once per epoch: no synchronisation per batch.
    loss_sum = torch.tensor(position.loss_sum, dtype=torch.float64, device=x.device)
    bar = tqdm(
        range(position.batch, config.batches),
        desc=f"epoch {position.epoch}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=None,
        initial=position.batch,
        total=config.batches,
    )
    started, images = time.perf_counter(), 0
    for b in bar:
        index = order[b * config.batch_size : (b + 1) * config.batch_size]
        loss = loss_fn(x[index], y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        position.seen += len(index)
        position.batch = b + 1
        images += len(index)
        if b % 50 == 0 and not bar.disable:
            bar.set_postfix(
                loss=f"{loss_sum.item() / position.seen:.4f}", img_s=f"{images / (time.perf_counter() - started):.0f}"
            )
        if interrupt.signal is not None:
            break
    bar.close()
    position.loss_sum = loss_sum.item()


def epoch_metrics(
    model: VanillaRNN, sets: dict, config: Config, position: Position, started: float, evaluate: bool = True
) -> dict:
    """The row of metrics.csv: accuracy on the whole training and validation sets, as the seed did after
    every epoch, in both measures (NaN when ``evaluate`` is off)."""
    nan = (math.nan, math.nan)
    train_acc = accuracy(model, *sets["train"], config, "training set") if evaluate else nan
    val_acc = accuracy(model, *sets["val"], config, "validation set") if evaluate else nan
    return {
        "epoch": position.epoch,
        "train_loss": position.loss_sum / position.seen,
        "train_acc": train_acc[0],
        "val_acc": val_acc[0],
        "train_acc_as_seed": train_acc[1],
        "val_acc_as_seed": val_acc[1],
        "seconds": time.perf_counter() - started,
    }


def accuracy(model: VanillaRNN, x: torch.Tensor, y: torch.Tensor, config: Config, progress: str | None = None):
    """Accuracy of the model on sequences x, and as the seed's code measured it."""
    ours, as_seed = predict(model, x, config.engine == "autograd", progress)
    return share_correct(ours, y), share_correct(as_seed, y)


def format_epoch(row: dict, epochs: int, seed: dict | None = None) -> str:
    """One line per epoch; the two measures of accuracy named, and the seed's log beside ours."""
    line = f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
    if not math.isnan(row["train_acc"]):
        line += f"train {row['train_acc_as_seed']:.4f}  val {row['val_acc_as_seed']:.4f} as the seed's code measured"
        if seed:
            line += f" (seed's log: {seed['train_acc']:.4f}  {seed['val_acc']:.4f})"
        line += f"; every row read: train {row['train_acc']:.4f}  val {row['val_acc']:.4f}  "
    return line + f"{row['seconds']:.1f}s"


def finish(model: VanillaRNN, test: tuple, config: Config, run: Run, state: TrainingState, log: Log) -> dict:
    """Test the model, then write the final model file and the summary."""
    summary = {"epochs": config.epochs, **evaluate(model, *test, config, "test set")}
    if state.metrics:
        last = state.metrics[-1]
        summary.update({k: last[k] for k in ("train_acc", "val_acc", "train_acc_as_seed", "val_acc_as_seed")})
    summary["sessions"] = state.sessions
    run.save_model(model)
    run.write_summary(summary)
    log(
        f"test accuracy {summary['test_acc']:.4f} with every row read, {summary['test_acc_as_seed']:.4f} as the "
        f"seed's code measured ({run.dir})"
    )
    return summary
