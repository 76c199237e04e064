"""Hyperparameter search with Ray Tune: random and grid search over any training settings, ASHA
early stopping on validation accuracy, every trial an ordinary run directory under ``OUT/runs``.

    [settings]            # fixed for every trial
    preset = "quick"
    epochs = 6
    [search]              # sampled per trial
    lr = {loguniform = [1e-4, 1e-2]}
    hidden = {choice = [64, 128, 256]}
    clip = {uniform = [0.5, 5.0]}
    seed = {grid = [1, 2]}     # grid: every value, for each sample
    [tune]
    samples = 8                # samples of the random part (times the grid)
    scheduler = "asha"         # or "none"
    grace_period = 2           # epochs every trial gets before ASHA may stop it
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from .config import FORMER_NAMES, current_names
from .data import MNIST
from .errors import SeqmnistError
from .files import markdown_table, read_json, write_csv, write_json, write_text
from .runner import IN_PROCESS, Cluster, Trial, anchored, cell_modules, connect, mnist_arrays, ray_trial, run_store
from .runs import Run
from .sweep import SETTINGS, GridFile, mean_sd

DISTRIBUTIONS = {"choice", "uniform", "loguniform", "grid", "randint"}
OPTIONS = {"samples": int, "scheduler": str, "grace_period": int, "reduction_factor": int}


def load_space(path: Path) -> tuple[dict, dict, dict]:
    """Fixed settings, searched settings ({key: (distribution, values)}) and Tune's options, checked."""
    space = GridFile(path)
    for table in space.data:
        if table not in ("settings", "search", "tune"):
            raise space.error(table, table, "not a table of a search (use settings, search, tune)")
    settings = space.data.get("settings", {})
    for key in settings:
        if FORMER_NAMES.get(key, key) not in SETTINGS:
            raise space.error(key, "settings", "not a setting")
    settings = current_names(settings)
    search = {}
    for key, spec in space.data.get("search", {}).items():
        if FORMER_NAMES.get(key, key) not in SETTINGS:
            raise space.error(key, "search", "not a setting")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise space.error(
                key, "search", f"must be {{DIST = [...]}} with DIST one of {', '.join(sorted(DISTRIBUTIONS))}"
            )
        ((kind, values),) = spec.items()
        if (
            not isinstance(values, list)
            or not values
            or (kind in ("uniform", "loguniform", "randint") and len(values) != 2)
        ):
            raise space.error(
                key, "search", f"{kind} needs {'[low, high]' if kind != 'choice' else 'a list of values'}"
            )
        if kind == "loguniform" and not all(isinstance(v, (int, float)) and v > 0 for v in values):
            raise space.error(key, "search", "loguniform needs positive bounds")
        name = FORMER_NAMES.get(key, key)  # an old name and its old values, in today's
        search[name] = (kind, [current_names({key: value})[name] for value in values])
    if not search:
        raise space.error("search", "search", "nothing to search: add a [search] table")
    options = {
        "samples": 4,
        "scheduler": "asha",
        "grace_period": 1,
        "reduction_factor": 2,
        **space.data.get("tune", {}),
    }
    for key, value in options.items():
        if key not in OPTIONS or not isinstance(value, OPTIONS[key]):
            raise space.error(key, "tune", f"not a Tune option (options: {', '.join(OPTIONS)})")
    if options["scheduler"] not in ("asha", "none") or options["samples"] < 1 or options["grace_period"] < 1:
        raise space.error("scheduler", "tune", "scheduler must be asha or none, samples and grace_period >= 1")
    for key, (_, values) in search.items():  # every extreme value makes a valid run, before any trains
        for value in values:
            try:
                Trial.of({**settings, key: value})
            except SeqmnistError as exc:
                raise space.error(key, "search", str(exc)) from None
    return settings, search, options


def _tune_trial(sampled: dict, fixed: dict, arrays: dict, store, threads: int) -> None:
    """One Tune trial: an ordinary run, its epochs reported to Tune as they finish."""
    from ray import tune

    trial = Trial.of({**fixed, **sampled})

    def report(row: dict) -> None:
        tune.report(
            {"epoch": row["epoch"], "val_acc": _finite(row["val_acc"]), "loss": row["train_loss"], "trial": trial.name}
        )

    ray_trial(trial, arrays, store, threads, report)


def _finite(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def tune(path: Path, out: Path, data: MNIST, cluster: Cluster = IN_PROCESS) -> dict:
    """Run the search on Ray (the cluster at ``cluster.address``, else one started here); every trial's run
    directory under out/runs; out/tune.csv, tune.md and best.json."""
    settings, search, options = load_space(path)
    settings = anchored(settings)  # its trials are defined on the workers, in other folders
    epochs = Trial.of(settings).config().recipe.epochs
    cpus, gpus = cluster.cpus_per_trial or 1, cluster.gpus_per_trial
    _, cells = search.get("cell", (None, []))  # a cell of one's own among the searched ones: its module too
    configs = [Trial.of({**settings, **({"cell": cell} if cell else {})}).config() for cell in [None, *cells]]
    ray = connect(cluster.address, cell_modules(configs))
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    try:
        store = run_store(ray, out / "runs")
        distributions = {
            "choice": ray_tune.choice,
            "grid": ray_tune.grid_search,
            "uniform": lambda v: ray_tune.uniform(*v),
            "loguniform": lambda v: ray_tune.loguniform(*v),
            "randint": lambda v: ray_tune.randint(v[0], v[1] + 1),
        }
        param_space = {key: distributions[kind](values) for key, (kind, values) in search.items()}
        scheduler = (
            ASHAScheduler(
                time_attr="epoch",
                max_t=epochs,
                grace_period=options["grace_period"],
                reduction_factor=options["reduction_factor"],
            )
            if options["scheduler"] == "asha"
            else None
        )
        trainable = functools.partial(_tune_trial, fixed=settings, store=store, threads=cpus)
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(trainable, arrays=mnist_arrays(data)), {"cpu": cpus, "gpu": gpus}
        )
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=ray_tune.TuneConfig(
                metric="val_acc", mode="max", scheduler=scheduler, num_samples=options["samples"]
            ),
            run_config=ray_tune.RunConfig(
                name="tune", storage_path=str((out / "ray").resolve()), verbose=0, callbacks=[_progress(ray_tune)]
            ),
        )
        results = tuner.fit()
        rows = [_result_row(r, search, out, epochs) for r in results]
    finally:
        ray.shutdown()
    rows = [r for r in rows if r]
    if not rows:
        raise SeqmnistError("no trial of the search reported an epoch (see the trial logs above)")
    best = max(rows, key=lambda r: r["val_acc"])
    write_csv(out / "tune.csv", rows)
    write_text(out / "tune.md", _markdown(rows, best))
    write_json(out / "best.json", best)
    return best


def _progress(ray_tune):
    """A line per reported epoch and per ended trial, printed by the driver."""

    class Progress(ray_tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            print(f"[{result['trial']}] epoch {result['epoch']}  val {result['val_acc']:.4f}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"[{(trial.last_result or {}).get('trial', trial)}] ended", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[{(trial.last_result or {}).get('trial', trial)}] failed (see {trial.local_path})", flush=True)

    return Progress()


def _result_row(result, search: dict, out: Path, epochs: int) -> dict | None:
    """A trial's line: what it sampled, how far it got (ASHA stops the weak ones early), its best
    validation accuracy and, when it finished, its test accuracy."""
    metrics = result.metrics or {}
    if "trial" not in metrics:
        return None
    history = result.metrics_dataframe
    run = Run(out / "runs" / metrics["trial"])
    summary = read_json(run.summary) if run.summary.exists() else {}
    status = "error" if result.error else ("finished" if int(metrics["epoch"]) >= epochs else "stopped by ASHA")
    return {
        **{key: result.config.get(key) for key in search},
        "trial": metrics["trial"],
        "epochs": int(metrics["epoch"]),
        "val_acc": float(history["val_acc"].max()) if history is not None and len(history) else metrics["val_acc"],
        "test_acc": summary.get("test_acc", ""),
        "status": status,
        "run_dir": str(run.dir),
    }


def _markdown(rows: list[dict], best: dict) -> str:
    keys = list(rows[0])
    table = markdown_table(keys, [[_cell(row[k]) for k in keys] for row in sorted(rows, key=lambda r: -r["val_acc"])])
    mean = mean_sd([r["val_acc"] for r in rows], percent=True)
    return f"{table}\n\nbest: {best['trial']} (validation accuracy {best['val_acc']:.4f}); all trials: {mean} %\n"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
