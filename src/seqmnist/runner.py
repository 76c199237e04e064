"""Many trainings, one way: trials, each an ordinary run directory ``OUT/runs/NAME``, run in this
process, in a local process pool, or on a Ray cluster. ``reproduce``, ``sweep`` and ``tune`` all go
through here.

A trial that finished is skipped; one that was interrupted resumes from its checkpoint. On Ray,
each trial runs in a scratch directory on whichever node Ray picks and ships its run files to a
small actor on the driver's node after every checkpoint, which writes them under the driver's
``OUT``: run directories come back whether or not the nodes share a filesystem, and a trial whose
worker dies is retried by Ray from the last checkpoint it shipped (so it loses at most the epoch in
progress).

The caller loads MNIST once and hands it over; it reaches every worker the same way, as its arrays:
once per pool process (the pool's initializer), once per cluster through Ray's object store (tune's
trials too).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import MNIST
from .errors import Log, SeqmnistError
from .files import write_json
from .interrupt import TrainingInterrupted, remember_signals
from .machine import available_cpus
from .registry import get_cell
from .runs import RUN_FILES, Run, new_run
from .train import AfterSave, train


@dataclass(frozen=True)
class Cluster:
    """Where many trainings run: in this process (``jobs`` 1), in ``jobs`` local processes sharing the
    cores, or on the Ray cluster at ``address``; each trial on ``cpus_per_trial`` cores (local: the
    cores over jobs; Ray: 1) and ``gpus_per_trial`` GPUs (Ray's)."""

    jobs: int = 1
    address: str | None = None
    cpus_per_trial: int | None = None
    gpus_per_trial: float = 0

    def check(self) -> None:
        if self.jobs < 1:
            raise SeqmnistError(f"--jobs must be an integer >= 1 (got {self.jobs})")


IN_PROCESS = Cluster()  # one trial after another, in this process


@dataclass(frozen=True)
class Trial:
    """One training: its name (its run directory's) and its settings (a preset and overrides)."""

    name: str
    settings: tuple[tuple[str, object], ...]  # sorted (key, value) pairs, so a trial is hashable

    @classmethod
    def of(cls, settings: dict, name: str | None = None) -> Trial:
        items = tuple(sorted(anchored(settings).items()))
        return cls(name or trial_name(settings), items)

    def config(self) -> Config:
        settings = dict(self.settings)
        return Config.from_settings(settings.pop("preset", "seed"), **settings)


def anchored(settings: dict) -> dict:
    """The settings with a relative TensorBoard folder made absolute here, where the trial is defined: a
    pool or Ray worker trains it from another working directory. (On a Ray cluster of several machines
    the folder must be one that every node can write, a shared filesystem.)"""
    folder = settings.get("tensorboard")
    return {**settings, "tensorboard": str(Path(folder).absolute())} if isinstance(folder, str) and folder else settings


def trial_name(settings: dict) -> str:
    """A readable prefix and a hash of every resolved setting that makes the run what it is (not where
    its records go): the same settings, the same name."""
    config = Config.from_settings(
        settings.get("preset", "seed"), **{k: v for k, v in settings.items() if k != "preset"}
    )
    canonical = json.dumps(config.identity(), sort_keys=True)  # flat: the names of runs before the groups
    cell = config.model.cell.rpartition(":")[2]  # module.path:ClassName -> ClassName: no ":" in a folder name
    return f"{cell}-{config.task.task}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def run_trial(trial: Trial, runs: Path, data: MNIST, log: Log = print, after_save: AfterSave | None = None) -> dict:
    """Train, resume or skip one trial under ``runs``; returns its summary."""
    config = trial.config()
    run = Run(runs / trial.name)
    if run.config.exists():
        saved = Config.from_file(run.config)
        if saved.identity() != config.identity():
            raise SeqmnistError(f"{run.dir} was trained with other settings; pick another --out")
        summary = run.finished_summary(saved)
        if summary:
            return summary
        if config != saved:  # where its records go, as the trial now asks
            write_json(run.config, config.to_dict())
        return train(config, data, run, resume=True, log=log, after_save=after_save)
    return train(config, data, new_run(run.dir), log=log, after_save=after_save)


def run_trials(
    trials: Iterable[Trial], out: Path, data: MNIST, cluster: Cluster = IN_PROCESS, log: Log = print
) -> dict[str, dict]:
    """Every trial's summary, by name, training those not finished, where ``cluster`` says."""
    trials = list(trials)
    cluster.check()
    if len({t.name for t in trials}) != len(trials):
        raise SeqmnistError("two trials have the same settings")
    for trial in trials:
        trial.config()  # every setting is checked before anything trains
    runs = out / "runs"
    if cluster.address:
        return _on_ray(trials, runs, data, cluster, log)
    if cluster.jobs == 1:
        return {t.name: run_trial(t, runs, data, _prefixed(log, t.name)) for t in trials}
    threads = cluster.cpus_per_trial or max(1, available_cpus() // cluster.jobs)
    return _on_pool(trials, runs, data, cluster.jobs, threads, log)


def _prefixed(log: Log, name: str) -> Log:
    return lambda line: log(f"[{name}] {line}")


# --- a local process pool ------------------------------------------------------------------------

_WORKER_DATA: list[MNIST] = []  # a pool worker's MNIST, from the arrays its initializer was given


def _start_worker(arrays: dict[str, np.ndarray], source: str) -> None:
    remember_signals()
    _WORKER_DATA.append(MNIST.from_arrays(arrays, Path(source)))


def _pool_trial(trial: Trial, runs: Path, threads: int) -> dict:
    """A trial in a pool worker, on its share of the cores."""
    torch.set_num_threads(threads)
    return run_trial(trial, runs, _WORKER_DATA[0], lambda line: print(f"[{trial.name}] {line}", flush=True))


def _on_pool(trials: list[Trial], runs: Path, data: MNIST, jobs: int, threads: int, log: Log) -> dict:
    """Longest-first is the caller's order; a signal stops every trial at a checkpoint and starts no more."""
    os.environ["TQDM_DISABLE"] = "1"  # bars of several processes would garble each other
    summaries: dict[str, dict] = {}
    stopped: list[int] = []
    start = (mnist_arrays(data), str(data.source))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=start) as pool:
        futures = {pool.submit(_pool_trial, t, runs, threads): t for t in trials}

        def stop(signum: int, frame: object) -> None:
            stopped.append(signum)
            for future in futures:
                future.cancel()  # those not started yet
            for process in list(getattr(pool, "_processes", {}).values()):
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)  # each saves a checkpoint and stops

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            summaries = _gather(futures, log)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if stopped:
        unfinished = len(trials) - len(summaries)
        raise TrainingInterrupted(
            stopped[0],
            f"{signal.Signals(stopped[0]).name}: stopped with {len(summaries)} of {len(trials)} trials finished "
            f"and {unfinished} checkpointed or not started; run the same command again to continue",
        )
    return summaries


def _gather(futures: dict, log: Log) -> dict[str, dict]:
    summaries, pending = {}, set(futures)
    while pending:
        done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        for future in done:
            if future.cancelled():
                continue
            trial = futures[future]
            try:
                summaries[trial.name] = future.result()
            except TrainingInterrupted:
                continue
            except BrokenProcessPool:
                raise SeqmnistError(
                    "a worker process died; finished trials and checkpoints are kept: run the same command again"
                ) from None
            log(f"[{trial.name}] done: test accuracy {summaries[trial.name]['test_acc']:.4f}")
    return summaries


# --- Ray ----------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SeqmnistError("--ray-address needs Ray: pip install 'seqmnist[ray]'") from None
    return ray


def cell_modules(configs: Iterable[Config]) -> list[str]:
    """The files of the modules the trials' cells come from (``--cell module.path:ClassName``): a
    module's own file, or its top-level package's folder. Ray ships them to every node (its runtime
    environment's py_modules), so a cell of one's own trains on machines that never saw it."""
    paths = []
    for cell in {config.model.cell for config in configs if ":" in config.model.cell}:
        module = sys.modules[get_cell(cell).__module__]
        top = sys.modules[module.__name__.partition(".")[0]]
        path = Path(top.__file__)
        paths.append(str(path.parent if path.name == "__init__.py" else path))
    return sorted(paths)


def connect(address: str | None, modules: list[str] | None = None):
    """Join the Ray cluster at ``address`` ('auto' or host:port) from this process, quietly; None: start
    one here. ``modules``: files every worker must be able to import (:func:`cell_modules`)."""
    ray = _import_ray()
    if address not in (None, "auto"):
        _check_listening(address)  # Ray itself would retry for minutes
    runtime_env = {"py_modules": modules} if modules else None
    where = {"address": address} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False}
    try:
        ray.init(**where, logging_level="ERROR", log_to_driver=False, configure_logging=True, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SeqmnistError(
            f"--ray-address {address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]})"
        ) from None
    return ray


def _check_listening(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SeqmnistError(f"--ray-address must be auto or HOST:PORT (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SeqmnistError(
            f"--ray-address {address}: cannot join a Ray cluster there (nothing answers: {exc.strerror or exc})"
        ) from None


def run_store(ray, out: Path):
    """The actor that keeps run directories under the driver's ``out``, pinned to the driver's node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(RunStore).options(scheduling_strategy=node).remote(str(out.resolve()))


class RunStore:
    """Run directories on the driver's disk, filled from trials on any node (a Ray actor), and the
    trials' log lines, which the driver prints (Ray's own log forwarding repeats lines when several
    nodes share a machine, and prefixes them with process ids)."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def get(self, name: str) -> dict[str, bytes]:
        directory = self.root / name
        return {f: (directory / f).read_bytes() for f in RUN_FILES if (directory / f).exists()}

    def put(self, name: str, files: dict[str, bytes]) -> None:
        from .files import atomic_path

        for file, content in files.items():
            if file in RUN_FILES:  # nothing else is written where the driver keeps its runs
                with atomic_path(self.root / name / file) as tmp:
                    tmp.write_bytes(content)


def ray_trial(trial: Trial, arrays: dict, store, threads: int, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """A trial on a Ray worker: its run directory fetched from the store into scratch space, trained
    on, shipped back after every checkpoint (a retried trial resumes from the last one shipped);
    ``on_epoch`` hears of every finished epoch's metrics (Tune's report)."""
    import ray

    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="seqmnist-"))
    try:
        local = scratch / trial.name
        local.mkdir()
        for file, content in ray.get(store.get.remote(trial.name)).items():
            (local / file).write_bytes(content)
        shipped: dict[str, float] = {}

        def ship(run: Run, row: dict | None) -> None:
            changed = {}
            for file in RUN_FILES:
                path = run.dir / file
                if path.exists() and shipped.get(file) != path.stat().st_mtime_ns:
                    changed[file] = path.read_bytes()
                    shipped[file] = path.stat().st_mtime_ns
            ray.get(store.put.remote(trial.name, changed))
            if row is not None and on_epoch is not None:
                on_epoch(row)

        data = MNIST.from_arrays(arrays, Path("ray-object-store"))

        def log(line: str) -> None:  # this node's scratch path means nothing to the driver
            # Waited for, so every line is in the store before the trial's result can reach the driver.
            ray.get(store.log.remote(f"[{trial.name}] {line.replace(str(local), trial.name)}"))

        return run_trial(trial, scratch, data, log, ship)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mnist_arrays(data: MNIST) -> dict[str, np.ndarray]:
    """The four arrays MNIST.from_arrays takes, back from a loaded split (what the object store carries)."""
    return {
        "train_images": np.concatenate([data.train_x.numpy(), data.val_x.numpy()]),
        "train_labels": np.concatenate([data.train_y.numpy(), data.val_y.numpy()]).astype(np.uint8),
        "test_images": data.test_x.numpy(),
        "test_labels": data.test_y.numpy().astype(np.uint8),
    }


def _on_ray(trials: list[Trial], runs: Path, data: MNIST, cluster: Cluster, log: Log) -> dict:
    ray, cpus = connect(cluster.address, cell_modules(t.config() for t in trials)), cluster.cpus_per_trial or 1
    try:
        store = run_store(ray, runs)
        arrays = ray.put(mnist_arrays(data))
        remote = ray.remote(num_cpus=cpus, num_gpus=cluster.gpus_per_trial, max_retries=3, retry_exceptions=False)(
            ray_trial
        )
        # Named after its trial, so the worker's process title (ray::ray_trial:NAME) says which it runs.
        refs = {remote.options(name=f"ray_trial:{t.name}").remote(t, arrays, store, cpus): t for t in trials}
        summaries, pending = {}, list(refs)
        started = time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for line in ray.get(store.take_lines.remote()):
                log(line)
            if not done:
                continue
            trial = refs[done[0]]
            try:
                summaries[trial.name] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, SeqmnistError) else None
                raise SeqmnistError(str(cause) if cause else f"trial {trial.name} failed: {exc}") from None
            minutes = (time.perf_counter() - started) / 60
            log(f"[{trial.name}] done: test accuracy {summaries[trial.name]['test_acc']:.4f} ({minutes:.1f} min)")
        return summaries
    finally:
        ray.shutdown()
