"""Training: the loop, and the run's files as it goes (evaluation: seqmnist.evaluation; stopping on a
signal: seqmnist.interrupt).

The loop never asks which cell it trains: a model gives it a loss (:meth:`SequenceClassifier.loss`)
and per-step logits to evaluate (:meth:`SequenceClassifier.logits`). Every file is replaced
atomically, so a run killed at any instant can be resumed from its last checkpoint; the order of
the training images in every epoch and the learning rate at every step are functions of the run's
settings alone, so a resumed run sees exactly the batches and rates an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import itertools
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .config import Config
from .data import MNIST
from .errors import Log, SeqmnistError
from .evaluation import accuracy, evaluate
from .interrupt import Interrupt, TrainingInterrupted
from .machine import cpu_model, keep_freed_memory, multiply_fingerprint, pick_device
from .measures import measure_columns, measured_words, measures_for
from .model import Draws, SequenceClassifier, build_model
from .recipes import EngineSGD, clip_gradients, learning_rate, make_optimizer, plateau_cuts
from .runs import Position, Run, TrainingState, metric_columns
from .tensorboard import event_writer

# Called after the run's files change: with the epoch's metrics when an epoch ended, else None (a
# checkpoint mid-epoch, or the final files). Executors use it to ship a run's files, Tune to hear of epochs.
AfterSave = Callable[[Run, "dict | None"], None]


# --- where the randomness comes from ------------------------------------------------------------


def initial_model(config: Config) -> tuple[SequenceClassifier, Iterator[np.ndarray]]:
    """The model with its initial weights, and the orders of the training images, epoch 1 onwards
    (config.recipe.rng)."""
    model = build_model(config.model_spec())
    n = config.recipe.train_images
    if config.recipe.rng == "numpy":
        stream = np.random.RandomState(config.recipe.seed)  # np.random.seed(seed), as layer.py
        return model.init_weights(Draws(stream)), _cumulative_orders(stream, n)
    model.init_weights(Draws(torch.Generator().manual_seed(config.recipe.seed)))
    return model, (_fresh_order(config.recipe.seed, e, n) for e in itertools.count(1))


def _cumulative_orders(stream: np.random.RandomState, n: int) -> Iterator[np.ndarray]:
    """The seed's shuffle: X = X[np.random.permutation(len(X))] every epoch, each permutation applied
    to the previous epoch's order."""
    order = np.arange(n)
    while True:
        order = order[stream.permutation(n)]
        yield order


def _fresh_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


# --- the loop ----------------------------------------------------------------------------------


def train_step(
    model: SequenceClassifier,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    fast: bool = True,
    clip: float = 0.0,
    clip_mode: str = "norm",
) -> torch.Tensor:
    """One optimiser step on sequences x with labels y; returns the batch's mean loss.

    An :class:`EngineSGD` takes the batch itself (the model's fused pass, no autograd); any other
    optimiser steps on autograd's gradients of the model's loss. The model is in training mode (batch
    norm's batch statistics, dropout) for the step alone, in evaluation mode after it."""
    if isinstance(optimizer, EngineSGD):
        return optimizer.step_on(x, y)
    model.train()
    try:
        loss = model.loss(x, y, fast=fast)
    finally:
        model.eval()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        clip_gradients(list(model.parameters()), clip, clip_mode)
    optimizer.step()
    return loss


def step_seed(seed: int, step: int) -> int:
    """The seed of torch's CPU generator for optimiser step ``step``: a step's dropout masks on the CPU are
    then a function of the run's seed and the step alone, the same in a resumed run."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def session(device: torch.device, path: str) -> dict:
    """The conditions this process trains under: results are byte-identical only when they agree."""
    return {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernel variant (evaluation's softmax)
        "device": str(device),
        "path": path,
        "multiply": multiply_fingerprint(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


class Progress:
    """What an epoch shows while it runs. On a terminal, a bar: batches, running loss, the accuracy of
    every 20th batch (read by the model's plain definition, so the fast path's state is never touched),
    images a second and time left. Elsewhere (logs, CI, pool and Ray workers) a plain line every
    ``PLAIN_EVERY`` seconds, so a minutes-long epoch is not silent."""

    SAMPLE_EVERY = 20  # batches
    PLAIN_EVERY = 60.0  # seconds

    def __init__(self, config: Config, position: Position, log: Log):
        self.config, self.position, self.log = config, position, log
        self.bar = tqdm(
            desc=f"epoch {position.epoch}/{config.recipe.epochs}",
            unit="batch",
            leave=False,
            disable=None,
            initial=position.batch,
            total=config.recipe.batches,
        )
        self.started = self.last_line = time.perf_counter()
        self.images, self.right, self.sampled = 0, 0, 0

    def update(self, model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> None:
        self.bar.update()
        self.images += len(x)
        batch, now = self.position.batch, time.perf_counter()
        if not self.due(batch, now):
            return
        with torch.no_grad():
            scores = model.readout.scores(model.logits(x, fast=False))
        self.right += int((scores.argmax(1) == y).sum())
        self.sampled += len(y)
        loss, accuracy, rate = (
            loss_sum.item() / self.position.seen,
            self.right / self.sampled,
            self.images / (now - self.started),
        )
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", img_s=f"{rate:.0f}")
            return
        self.last_line = now
        left = (self.config.recipe.batches - batch) * self.config.recipe.batch_size / rate
        self.log(
            f"epoch {self.position.epoch}/{self.config.recipe.epochs}: batch {batch}/{self.config.recipe.batches}, "
            f"loss {loss:.4f}, accuracy {accuracy:.3f} (sampled), {rate:.0f} images/s, {left / 60:.1f} min left"
        )

    def due(self, batch: int, now: float) -> bool:
        """A bar shows every SAMPLE_EVERY-th batch; plain lines come every PLAIN_EVERY seconds."""
        if self.bar.disable:
            return now - self.last_line >= self.PLAIN_EVERY
        return batch % self.SAMPLE_EVERY == 0

    def close(self) -> None:
        self.bar.close()


class Trainer:
    """One run's training: its model, optimiser, data as sequences, and where it is."""

    def __init__(
        self,
        config: Config,
        run: Run,
        model: SequenceClassifier,
        optimizer: torch.optim.Optimizer,
        state: TrainingState,
        orders: Iterator[np.ndarray],
        sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
        log: Log = print,
        after_save: AfterSave | None = None,
    ):
        self.config, self.run, self.model, self.optimizer, self.state = config, run, model, optimizer, state
        self.orders, self.sets, self.log = orders, sets, log
        self.after_save = after_save or (lambda run, row: None)
        self.device = next(model.parameters()).device
        self.fast = config.run.compute == "fast"
        self.measures = measures_for(config)
        self.logged = {m.name: m.reference(config) for m in self.measures}
        # What hears of the training besides its caller: each epoch's row, and the summary at the end.
        self.listeners = [writer] if (writer := event_writer(config, run, model)) else []

    @classmethod
    def start(
        cls, config: Config, data: MNIST, run: Run, resume: bool, log: Log = print, after_save: AfterSave | None = None
    ) -> Trainer:
        """The run's trainer on the device its settings pick, from its checkpoint where resumed; says what
        it will do, and how long this machine will take, before any epoch."""
        device, why = pick_device(config.run.device, replay=config.recipe.rng == "numpy")
        if device.type == "cpu":
            keep_freed_memory()
        # Built, moved, then given an optimiser and the checkpoint: the optimiser's state is made (and
        # loaded) where the weights already are, so every tensor of a resumed run is on one device.
        model, orders = initial_model(config)
        model.to(device)
        optimizer = new_optimizer(model, config)
        state = TrainingState()
        if resume and run.checkpoint.exists():
            state = run.load_checkpoint(model, optimizer)
            log(f"resuming {run.dir} at epoch {state.position.epoch}, batch {state.position.batch}")
        data = data.subset(config.recipe.subset, config.run.eval_images).to(device)
        sequencer = run.sequencer(config)
        order = sequencer.order_tensor()
        sets = {name: (sequencer.encode(x, order), y) for name, x, y in data.labelled_sets()}
        orders = itertools.islice(orders, state.position.epoch - 1, None)
        trainer = cls(config, run, model, optimizer, state, orders, sets, log, after_save)
        path = trainer.path()
        state.sessions.append({**session(device, path), "from_epoch": state.position.epoch})
        threads = torch.get_num_threads()
        log(config.describe())
        log(
            f"on {device} ({why}), {path}, {threads} thread{'s' if threads > 1 else ''}; "
            f"{_minutes(trainer.estimate_minutes())} for epochs {state.position.epoch}-{config.recipe.epochs}"
        )
        if config.recipe.subset and config.run.eval_images is None:
            log("validation and test read all 10,000 images each: --eval-images N makes a quick look quicker")
        return trainer

    def estimate_minutes(self) -> float:
        """The remaining epochs' minutes: a training step timed on copies of the model and optimiser (the
        run's own are not touched), evaluation counted as a third of a step per image read."""
        config, position = self.config, self.state.position
        model = copy.deepcopy(self.model)
        optimizer = new_optimizer(model, config)
        x, y = (t[: config.recipe.batch_size] for t in self.sets["train"])
        clip = (config.recipe.clip, config.recipe.clip_mode)
        train_step(model, optimizer, x, y, self.fast, *clip)  # warm-up: first allocations, kernels
        started = time.perf_counter()
        train_step(model, optimizer, x, y, self.fast, *clip)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        step = time.perf_counter() - started
        epochs = config.recipe.epochs - position.epoch + 1
        batches = epochs * config.recipe.batches - position.batch
        evaluated = len(self.sets["val"][0]) + (len(self.sets["train"][0]) if config.run.eval_train else 0)
        images_read = evaluated * -(-epochs // config.run.eval_every) + 2 * len(self.sets["test"][0])
        return step * (batches + images_read / config.recipe.batch_size / 3) / 60

    def path(self) -> str:
        """The training path in words: the model's, and whether plain SGD takes the engine's own step."""
        own_step = isinstance(self.optimizer, EngineSGD)
        return self.model.training_path(self.device, self.fast) + (" with its own SGD step" if own_step else "")

    def fit(self) -> dict:
        """Train the remaining epochs, checkpointing after each (and on a signal); return the summary."""
        config, state = self.config, self.state
        with Interrupt() as interrupt:
            while state.position.epoch <= config.recipe.epochs and not state.stopped_early:
                position = state.position
                started = time.perf_counter() - position.seconds
                order = torch.from_numpy(next(self.orders)).to(self.device)
                self.train_batches(order, interrupt)
                if not math.isfinite(position.loss_sum):
                    raise diverged(self.run, position)
                row = None
                if position.batch == config.recipe.batches:
                    row = self.end_epoch(started)
                else:
                    position.seconds = time.perf_counter() - started
                # Heard before the checkpoint: killed in between, the epoch is trained again and its
                # listeners hear it again (TensorBoard's writer drops the first telling), never not at all.
                for listener in self.listeners if row else ():
                    listener.epoch_ended(row)
                self.run.save_checkpoint(self.model, self.optimizer, state)
                self.after_save(self.run, row)
                if interrupt.signal is not None:
                    raise TrainingInterrupted(
                        interrupt.signal,
                        f"{signal.Signals(interrupt.signal).name}: stopped at epoch {state.position.epoch}, "
                        f"batch {state.position.batch}/{config.recipe.batches}; checkpoint saved; "
                        f"continue with: seqmnist train --resume {self.run.dir}",
                    )
        return self.finish()

    def train_batches(self, order: torch.Tensor, interrupt: Interrupt) -> None:
        """The rest of the current epoch, advancing the position; stops early on a signal."""
        config, position, model = self.config, self.state.position, self.model
        x, y = self.sets["train"]
        # Summed on the device and read once per epoch: no synchronisation per batch.
        loss_sum = torch.tensor(position.loss_sum, dtype=torch.float64, device=x.device)
        progress = Progress(config, position, self.log)
        for b in range(position.batch, config.recipe.batches):
            index = order[b * config.recipe.batch_size : (b + 1) * config.recipe.batch_size]
            step = (position.epoch - 1) * config.recipe.batches + b
            self.set_learning_rate(step)
            if config.model.dropout:  # the only draws a step makes; a run without them skips the reseeding
                torch.default_generator.manual_seed(step_seed(config.recipe.seed, step))
            # index_select rather than x[index]: the same rows, less of Python's indexing machinery.
            batch_x, batch_y = x.index_select(0, index), y.index_select(0, index)
            clip = (config.recipe.clip, config.recipe.clip_mode)
            loss = train_step(model, self.optimizer, batch_x, batch_y, self.fast, *clip)
            model.constrain_()
            loss_sum += loss.detach() * len(index)
            position.seen += len(index)
            position.batch = b + 1
            progress.update(model, batch_x, batch_y, loss_sum)
            if interrupt.signal is not None:
                break
        progress.close()
        position.loss_sum = loss_sum.item()

    def set_learning_rate(self, step: int) -> None:
        recipe = self.config.recipe
        cuts = plateau_cuts([row["val_acc"] for row in self.state.metrics], recipe.plateau_patience)
        rate = learning_rate(recipe, step, cuts)
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)  # a checkpoint from before the groups has no scale

    def end_epoch(self, started: float) -> dict:
        """Metrics of the finished epoch (returned), the best weights so far, the early stop; the next
        position."""
        config, state = self.config, self.state
        position = state.position
        evaluate_now = position.epoch % config.run.eval_every == 0 or position.epoch == config.recipe.epochs
        row = self.epoch_metrics(position, started, evaluate_now)
        state.metrics.append(row)
        notes = "".join(m.epoch_note(row, self.logged[m.name].get(position.epoch)) for m in self.measures)
        self.log(format_epoch(row, config.recipe.epochs, notes))
        self.run.write_metrics(state.metrics)
        if evaluate_now and not row["val_acc"] <= state.best_val_acc:
            state.best_val_acc, state.best_epoch = row["val_acc"], position.epoch
            self.run.save_best(self.model)
        elif (
            evaluate_now
            and config.recipe.patience
            and position.epoch - state.best_epoch >= config.recipe.patience * config.run.eval_every
        ):
            state.stopped_early = True
            self.log(f"stopping early: no better validation accuracy since epoch {state.best_epoch}")
        state.position = Position(epoch=position.epoch + 1)
        return row

    def epoch_metrics(self, position: Position, started: float, evaluate_now: bool) -> dict:
        """The row of metrics.csv: accuracy on the training and validation sets, as the seed did after
        every epoch, by the model's readout and every registered measure (NaN where not measured)."""
        row = {"epoch": position.epoch, "train_loss": position.loss_sum / position.seen}
        wanted = {"train": evaluate_now and self.config.run.eval_train, "val": evaluate_now}
        for split, progress in (("train", "training set"), ("val", "validation set")):
            if wanted[split]:
                row.update(accuracy(self.model, *self.sets[split], self.config, split, progress))
        row.update(lr=self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        return {column: row.get(column, math.nan) for column in metric_columns()}

    def finish(self) -> dict:
        """Test the final model and the best-validation one; write the final model and the summary."""
        config, state, run = self.config, self.state, self.run
        summary = {"epochs": len(state.metrics), **evaluate(self.model, *self.sets["test"], config, "test set")}
        if state.metrics:
            last = state.metrics[-1]
            summary.update({k: last[k] for k in ("train_acc", "val_acc", *measure_columns("train", "val"))})
        if run.best.exists():
            best = build_model(config.model_spec()).to(self.device)
            run.load_weights(run.best, best)
            tested = evaluate(best, *self.sets["test"], config, "test set, best-validation weights")
            summary["best"] = {"epoch": state.best_epoch, "val_acc": state.best_val_acc, "test_acc": tested["test_acc"]}
        summary["stopped_early"] = state.stopped_early
        summary["parameters"] = sum(p.numel() for p in self.model.parameters())
        summary["minutes"] = sum(row["seconds"] for row in state.metrics) / 60
        summary["sessions"] = state.sessions
        run.save_model(self.model)
        run.write_summary(summary)
        self.after_save(run, None)
        for listener in self.listeners:
            listener.finished(summary)
        measured = "".join(f", {words}" for words in measured_words(summary))
        best = f"; best validation at epoch {state.best_epoch}" if "best" in summary else ""
        caveat = f"; {config.not_comparable}" if config.not_comparable else ""
        self.log(f"test accuracy {summary['test_acc']:.4f}{measured}{best}{caveat} ({run.dir})")
        return summary


def train(
    config: Config, data: MNIST, run: Run, resume: bool = False, log: Log = print, after_save: AfterSave | None = None
) -> dict:
    """Train (or continue training) the run in ``run.dir``; return its summary. A new run's files are
    written once the trainer is ready, so a setting this machine cannot honour (--device cuda without
    one) leaves nothing behind."""
    trainer = Trainer.start(config, data, run, resume, log, after_save)
    if not resume:
        run.start(config)
    return trainer.fit()


def new_optimizer(model: SequenceClassifier, config: Config) -> torch.optim.Optimizer:
    """The recipe's optimiser; plain SGD takes the model's own fused step where nothing (autograd's
    path, clipping) is to come between the gradient and the update."""
    own_step = config.run.compute == "fast" and not config.recipe.clip
    return make_optimizer(model, config.recipe, own_step=own_step)


def diverged(run: Run, position: Position) -> SeqmnistError:
    """The error for a NaN or infinite loss. Without a checkpoint nothing worth keeping exists, so the
    run's files go and the same --out can be used again."""
    if run.checkpoint.exists():
        kept = f"{run.checkpoint} keeps the last good state; start anew with other settings to go on"
    else:
        run.discard()
        kept = "nothing was kept, so the same --out can be used again"
    return SeqmnistError(
        f"training diverged in epoch {position.epoch} (loss is {position.loss_sum}); {kept}; "
        "try a smaller --lr (or --clip)"
    )


def _minutes(minutes: float) -> str:
    return "under a minute" if minutes < 1 else f"about {minutes:.0f} min"


def format_epoch(row: dict, epochs: int, notes: str = "") -> str:
    """One line per epoch: the loss, the accuracies where measured (the measures' ``notes`` before the
    model's own), the time."""
    line = f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  "
    if not math.isnan(row["val_acc"]):
        train = f"train {row['train_acc']:.4f}  " if not math.isnan(row["train_acc"]) else ""
        line += f"{notes}{train}val {row['val_acc']:.4f}  "
    return line + f"{row['seconds']:.1f}s"
