"""The ``seqmnist`` command line. Parsing and printing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

from .errors import SeqmnistError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2, and no flag may be abbreviated
    (abbreviations break silently as flags are added)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, but an unknown flag close to one the command has names it (``--epoch``: did you
        mean ``--epochs``?): without abbreviations, a near miss is the commonest mistake."""
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}{self.suggestions(unknown, parsed)}")
        return parsed

    def suggestions(self, unknown: list[str], parsed: argparse.Namespace) -> str:
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        command = commands[0].choices.get(getattr(parsed, "command", None)) if commands else None
        known = [flag for a in (command or self)._actions for flag in a.option_strings if flag.startswith("--")]
        near = [
            match[0]
            for word in unknown
            if word.startswith("--") and (match := difflib.get_close_matches(word.split("=")[0], known, n=1))
        ]
        return f"; did you mean {', '.join(near)}?" if near else ""


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory with the four MNIST IDX files (default: $SEQMNIST_DATA, else a download cache)",
    )


def add_seed_models_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed-models",
        metavar="DIR",
        help="directory with the seed's rnn_stepK.model files (default: $SEQMNIST_SEED_MODELS, else a download cache)",
    )


# What the train command adds to a setting's help: how --resume uses it.
RESUME_HELP = {
    "epochs": "with --resume: train the run on to this many epochs (see --resume for the learning rate)",
    "device": "with --resume: continue the run there",
}


def add_setting_flag(parser: argparse._ActionsContainer, name: str, text: str | None = None) -> None:
    """The flag of a setting of seqmnist.config, as its declaration says; unset, it leaves the preset's value."""
    from .config import RENAMED, SETTINGS

    setting = SETTINGS[name]
    valid = setting.valid
    text = (text or setting.help).replace("%", "%%")
    if valid.parse is bool:
        parser.add_argument(setting.flag, action=argparse.BooleanOptionalAction, help=text)
        return
    choices = list(valid.choices) if valid.choices is not None else None
    if choices is not None and not valid.closed:  # listed in the help, not the only ones argparse lets through
        choices, metavar = None, "{" + ",".join(choices) + "}"
    else:
        metavar = setting.metavar
    renamed = RENAMED.get(name)
    if renamed and choices:
        choices = AlsoFormer(choices, renamed.values.values())
    parser.add_argument(setting.flag, type=valid.parse, choices=choices, metavar=metavar, help=text)
    if renamed and renamed.old != name:
        parser.add_argument(renamed.flag, dest=f"former_{name}", choices=choices, help=argparse.SUPPRESS)


class AlsoFormer(list):
    """A renamed setting's choices: today's, which the help and errors list, and its old values, which
    still parse."""

    def __init__(self, choices: list, former: Iterable[str]) -> None:
        super().__init__(choices)
        self.former = set(former)

    def __contains__(self, value: object) -> bool:
        return value in self.former or super().__contains__(value)


def train_help(name: str) -> str:
    """A setting's help, with what it does with --resume where it does something."""
    from .config import SETTINGS

    extra = RESUME_HELP.get(name)
    return f"{SETTINGS[name].help}; {extra}" if extra else SETTINGS[name].help


# The train flags a person reaches for every day, shown first; the rest follow by group.
EVERYDAY = ("cell", "task", "epochs", "subset")


def add_training_flags(train: argparse.ArgumentParser) -> None:
    """The everyday flags, then one flag per other setting of seqmnist.config, by group."""
    from .config import GROUPS, PRESETS, SETTINGS

    everyday = train.add_argument_group("everyday flags (every other setting follows, by group)")
    everyday.add_argument(
        "--preset",
        choices=PRESETS,
        metavar="NAME",
        help="named settings that other flags override; `seqmnist presets` lists them with their results "
        "(default: seed, the 2016 replay; with --cell or --task, the preset for that cell on that task, else "
        "the task's recipe for any cell, and the first line says which)",
    )
    for name in EVERYDAY:
        add_setting_flag(everyday, name, train_help(name))
    everyday.add_argument("--out", metavar="RUN_DIR", help="where the run's files go (default: runs/<preset>-<time>)")
    everyday.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run with its saved settings; with --epochs N, extend a finished run to N epochs: the "
        "learning rate is what a run planned for N epochs has at each step (constant and step schedules go on "
        "as they were, a cosine is stretched to end at epoch N, so its rate rises again; no second warm-up)",
    )
    add_data_flag(everyday)
    groups = {group: train.add_argument_group(kind.title) for group, kind in GROUPS.items()}
    for name, setting in SETTINGS.items():
        if name not in EVERYDAY:
            add_setting_flag(groups[setting.group], name, train_help(name))
    groups["run"].add_argument(
        "--threads", type=int, help="CPU threads (default: every CPU this process may use); not a setting of the run"
    )


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="train the trials on this Ray cluster (auto or host:port) instead of local processes",
    )
    parser.add_argument("--cpus-per-trial", type=int, help="CPU cores each trial uses (local: cores / jobs; Ray: 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs each trial asks Ray for (0)")


# The settings bench times one configuration by, and where its help differs from train's.
BENCH_SHAPE = ("cell", "task", "hidden", "layers", "state", "readout", "pixels_per_step", "batch_size", "bias")
BENCH_HELP = {
    "bias": "biases (default: none for the seed, with for other cells)",
    "readout": "how the per-step outputs make one prediction (default: the seed's, else the cell's first)",
}


EXAMPLES = """examples:
  seqmnist train --preset quick --out runs/first   a first look, trained on all of MNIST
  seqmnist predict runs/first my-digit.png         what it makes of your own digit, row by row
  seqmnist train --cell gru --task rows            any cell on any task, with the settings that suit it

`seqmnist presets` lists the named settings with their accuracy; `seqmnist COMMAND --help` says more."""


def build_parser() -> Parser:
    from .config import PRESETS, QUICK_LOOK, SETTINGS

    parser = Parser(
        prog="seqmnist",
        description="Classify MNIST digits with a recurrent network that reads them as a sequence.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('seqmnist')}")
    commands = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")  # none: the help

    train = commands.add_parser("train", help="train a model (the seed's recipe by default)")
    add_training_flags(train)
    commands.add_parser("presets", help="the named settings: what each is, its accuracy and minutes measured")

    evaluate = commands.add_parser("evaluate", help="test accuracy and confusion matrix of a trained run")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from train or import-theano)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--best", action="store_true", help="the best-validation weights, not the final ones")
    add_data_flag(evaluate)

    importer = commands.add_parser("import-theano", help="make a run directory of a model file of the seed's code")
    importer.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        nargs="?",
        help="rnn_stepK.model, as the seed's code wrote it (default: the seed's published one for --rows, "
        "verified, from --seed-models, else $SEQMNIST_SEED_MODELS, else a download cache)",
    )
    importer.add_argument("--rows", type=int, required=True, help="the rows K it was trained to read")
    importer.add_argument("--out", metavar="RUN_DIR", required=True, help="the run directory to create")
    add_seed_models_flag(importer)
    add_data_flag(importer)

    reproduce = commands.add_parser("reproduce", help="redo the seed's experiments; figures and report.md")
    reproduce.add_argument("--out", metavar="DIR", default="reproduction", help="output directory (reproduction)")
    reproduce.add_argument("--quick", action="store_true", help="a few epochs on a subset: a first look, same files")
    reproduce.add_argument("--jobs", type=int, default=1, help="sweep members trained in parallel processes (1)")
    add_cluster_flags(reproduce)
    add_seed_models_flag(reproduce)
    add_data_flag(reproduce)

    sweep = commands.add_parser("sweep", help="train a grid of settings (a TOML file); a results table")
    sweep.add_argument("grid", metavar="GRID.toml", help="[settings], [grid], [[include]], [[exclude]] tables")
    sweep.add_argument("--out", metavar="DIR", required=True, help="where the trials' runs and the tables go")
    sweep.add_argument("--jobs", type=int, default=1, help="local processes training trials at once (1)")
    add_cluster_flags(sweep)
    add_data_flag(sweep)

    benchmark = commands.add_parser(
        "benchmark", help="a cell on the field's protocol: a row per task beside the presets and papers"
    )
    benchmark.add_argument(
        "--cell", required=True, help="a registered cell's name, or module.path:ClassName for one of your own"
    )
    benchmark.add_argument(
        "--tasks", default="rows,pixel,permuted", help="comma-separated: rows, pixel, permuted (default: all three)"
    )
    benchmark.add_argument("--seeds", type=int, default=3, help="seeds 1..N of every task (default: 3)")
    benchmark.add_argument("--out", metavar="DIR", required=True, help="where the runs, the rows and the figure go")
    benchmark.add_argument(
        "--beside",
        metavar="RUN_OR_SWEEP_DIR",
        nargs="*",
        default=[],
        help="runs to draw beside yours in frontier.png (e.g. docs/results, the presets' evidence)",
    )
    quick = benchmark.add_argument_group("a quick look (its rows are then outside the protocol)")
    for name in QUICK_LOOK:
        add_setting_flag(quick, name, f"{SETTINGS[name].about} (default: the protocol's, per task)")
    benchmark.add_argument("--jobs", type=int, default=1, help="local processes training trials at once (1)")
    add_cluster_flags(benchmark)
    add_data_flag(benchmark)

    tune = commands.add_parser("tune", help="search settings with Ray Tune (random or grid, ASHA early stopping)")
    tune.add_argument(
        "space",
        metavar="SPACE.toml",
        help="[settings], [search] (choice, uniform, loguniform, "
        "grid) and [tune] (samples, scheduler, grace_period) tables",
    )
    tune.add_argument("--out", metavar="DIR", required=True, help="where the trials' runs and the results go")
    tune.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a Ray cluster (auto or host:port); default: a local one started for this search",
    )
    tune.add_argument("--cpus-per-trial", type=int, default=1, help="CPU cores each trial asks for (1)")
    tune.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs each trial asks for (0)")
    add_data_flag(tune)

    plot = commands.add_parser("plot", help="figures of one run: curves, confusion matrix, weights, row by row")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    plot.add_argument(
        "--image",
        metavar="FILE",
        action="append",
        help="instead: the model reading your own image (repeatable): RUN_DIR/figures/reading-NAME.png",
    )
    add_data_flag(plot)

    compare = commands.add_parser(
        "compare", help="runs side by side: the settings that differ, the results, the validation curves"
    )
    compare.add_argument(
        "paths",
        metavar="RUN_OR_SWEEP_DIR",
        nargs="+",
        help="a run folder, or a folder holding runs (a sweep's, reproduce's; searched 4 levels down)",
    )
    compare.add_argument(
        "--out", metavar="DIR", default=".", help="where compare.png and compare.csv go (default: the current folder)"
    )
    compare.add_argument(
        "--frontier",
        action="store_true",
        help="also frontier.png: per task, accuracy against minutes and parameters, beside the papers'",
    )

    predict = commands.add_parser("predict", help="what a trained run makes of your own images of digits")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from train or import-theano)")
    predict.add_argument(
        "images", metavar="IMAGE", nargs="*", help="PNG, JPEG, GIF, BMP or WebP files of one digit each, any size"
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per image: label, probabilities, trace")
    predict.add_argument("--top", type=int, default=3, metavar="N", help="print the N most likely digits (3)")
    predict.add_argument("--save-input", metavar="DIR", help="write the 28x28 inputs the model read, as PNGs")
    predict.add_argument(
        "--plot", metavar="DIR", help="figures of the model reading each image: the image, its input, each row's belief"
    )
    predict.add_argument("--best", action="store_true", help="the best-validation weights, not the final ones")

    serve = commands.add_parser("serve", help="a local page: draw a digit, watch the model read it step by step")
    serve.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from train or import-theano)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (8000; 0: any free port)")
    serve.add_argument("--best", action="store_true", help="the best-validation weights, not the final ones")

    export = commands.add_parser(
        "export",
        help="the model as ONNX: the whole sequence, and one step for streaming",
        description="Write a run's model as two ONNX files: FILE, the whole sequence (x: batch, steps, inputs -> "
        "probabilities: batch, 10), and FILE's .step.onnx beside it (model.onnx -> model.step.onnx), one step for "
        "streaming (x: batch, inputs and state: batch, width, zeros at first -> next_state and probabilities, the "
        "readout's belief after each step). Each file's metadata 'seqmnist' (JSON) says how an image becomes the "
        "sequence and lays out the state.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from train or import-theano)")
    export.add_argument("--onnx", metavar="FILE", required=True, help="the whole sequence's file; the step's beside it")
    export.add_argument("--best", action="store_true", help="the best-validation weights, not the final ones")
    export.add_argument(
        "--check",
        type=int,
        metavar="N",
        help="then run both files with onnxruntime on the first N test images and print the largest difference "
        "from PyTorch's probabilities",
    )
    add_data_flag(export)

    bench = commands.add_parser("bench", help="training speed against the plain PyTorch loop")
    bench.add_argument("--seconds", type=float, default=24.0, help="timing budget of each comparison (24)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--all", action="store_true", help="every cell on rows and on pixel, side by side")
    bench.add_argument(
        "--preset",
        nargs="+",
        choices=PRESETS,
        metavar="NAME",
        help="each named preset's model, task and batch, side by side (the flags below on top of each)",
    )
    shape = bench.add_argument_group("one configuration (default: the seed's, with the multiply peak and scaling)")
    for name in BENCH_SHAPE:
        add_setting_flag(shape, name, BENCH_HELP.get(name))
    return parser


def settings(args: argparse.Namespace) -> dict:
    """The settings the command line gave, by flat name (None where a flag was not given); a renamed
    flag or value is taken in today's name, which a line on stderr gives."""
    from .config import RENAMED, SETTINGS, current_names

    given = {name: getattr(args, name, None) for name in SETTINGS}
    for name, renamed in RENAMED.items():
        former = getattr(args, f"former_{name}", None)
        if former is not None and given[name] is not None:
            raise SeqmnistError(
                f"{SETTINGS[name].flag} and {renamed.flag} are one setting, under its new and old names: give one"
            )
        value = given[name] if former is None else former
        now = current_names({name: value})[name]
        if former is not None or now != value:
            print(f"seqmnist: {SETTINGS[name].flag} {now} is the new name of {renamed.flag} {value}", file=sys.stderr)
            given[name] = now
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from .config import NEUTRAL, Config, look_batch, preset_for
    from .data import MNIST
    from .machine import use_threads
    from .runs import new_run, open_for_resume
    from .train import train

    given = settings(args)
    use_threads(args.threads)
    if args.resume:
        # Besides how far (--epochs), a resumed run takes only what does not change what it learns.
        extra = {**given, "preset": args.preset, "out": args.out}
        dropped = [
            f"--{name.replace('_', '-')}"
            for name, value in extra.items()
            if name not in ("epochs", *NEUTRAL) and value is not None
        ]
        if dropped:
            raise SeqmnistError(f"--resume uses the settings saved in the run; drop {', '.join(dropped)}")
        neutral = {name: given[name] for name in NEUTRAL if given[name] is not None}
        run, config = open_for_resume(Path(args.resume), args.epochs, **neutral)
    else:
        preset, why = (args.preset, None) if args.preset else preset_for(given["cell"], given["task"])
        config = Config.from_settings(preset, **given)
        if why and (given["cell"] or given["task"]):
            print(f"settings: {why}; the flags given on top")
        if look_batch(preset, {k: v for k, v in given.items() if v is not None}):
            print(
                f"a look at {config.recipe.subset:,} images: batches of {config.recipe.batch_size}, "
                f"{config.recipe.batches} steps an epoch (--batch-size sets it)"
            )
        run = new_run(Path(args.out or f"runs/{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"))
        if args.preset is None and all(value is None for value in given.values()):
            print(
                "no flags: the seed's 100-epoch replay (the estimate below is this machine's); "
                "for a first look: seqmnist train --preset quick (2 epochs)"
            )
    train(config, MNIST.load(args.data_dir), run, resume=bool(args.resume))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS, measured_presets
    from .files import markdown_table

    measured, machines = measured_presets(), {}
    rows = []
    for name, preset in PRESETS.items():
        row = measured.get(name)
        if row is None:
            rows.append([name, preset.about, "not measured", "-"])
            continue
        spread = f" ± {row['sd']}" if row["sd"] else ""
        runs = f"{row['runs']} seed{'s' if row['runs'] != '1' else ''}"
        rows.append([name, preset.about, f"{row['test_acc']}{spread}% ({runs})", row["minutes"]])
        machines.setdefault(row["measured_on"], []).append(name)
    print(markdown_table(["preset", "what", "test accuracy", "minutes"], rows, "llrr", padded=True))
    print("\nTest accuracy at the best validation epoch, mean ± sd over seeds; minutes of the first seed's run.")
    for machine, names in machines.items():
        print(f"Measured on {machine}: {', '.join(names)}.")
    print("Each preset's evidence, curves and command: docs/results.md.")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import MNIST
    from .evaluation import evaluate_run
    from .measures import measure_columns, measured_words
    from .runs import Run, round_accuracy

    run = Run(Path(args.run_dir))
    config = run.read_config()
    run.load_model(config, args.best)  # a missing or broken model file fails before the data loads
    result = evaluate_run(run, config, MNIST.load(args.data_dir), args.best)
    tested = sum(map(sum, result["confusion_matrix"]))
    result = {**result, **{k: round_accuracy(result[k], tested) for k in ("test_acc", *measure_columns("test"))}}
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"test accuracy {result['test_acc']:.4f} ({config.describe()})"
        + "".join(f"; {words}" for words in measured_words(result))
    )
    print("confusion matrix (rows: true digit, columns: predicted digit)")
    print("     " + "".join(f"{d:>6}" for d in range(10)))
    for digit, counts in enumerate(result["confusion_matrix"]):
        print(f"{digit:>5}" + "".join(f"{c:>6}" for c in counts))
    return 0


def cmd_import_theano(args: argparse.Namespace) -> int:
    from .seed import find_seed_model, import_theano

    if args.model_file and args.seed_models:
        raise SeqmnistError("--seed-models names where the seed's own model comes from; drop it or MODEL_FILE")
    path = Path(args.model_file) if args.model_file else find_seed_model(args.rows, args.seed_models)
    summary = import_theano(path, args.rows, Path(args.out), data_dir=args.data_dir)
    print(
        f"imported {path} into {args.out}: test accuracy {summary['test_acc']:.4f} with every row "
        f"read, {summary['test_acc_as_seed']:.4f} as the seed's code measured"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .config import SETTINGS

    if not 0 < args.seconds <= 3600:
        raise SeqmnistError(f"--seconds must be in (0, 3600] (got {args.seconds})")
    shape = {name: getattr(args, name) for name in BENCH_SHAPE if getattr(args, name) is not None}
    if args.all:
        given = [SETTINGS[name].flag for name in shape] + (["--preset"] if args.preset else [])
        if given:
            raise SeqmnistError("--all runs its own configurations; drop " + ", ".join(given))
        result = bench.cells_run(bench.matrix_configs(), args.seconds)
    elif args.preset:
        result = bench.cells_run(bench.preset_configs(args.preset, shape), args.seconds)
    elif shape:
        result = bench.cells_run([bench.configuration(shape)], args.seconds)
    else:
        result = bench.seed_run(seconds=args.seconds, scaling_seconds=args.seconds / 5)
    if args.json:
        print(json.dumps(result))
    else:
        print(bench.format_cells_table(result) if "comparisons" in result else bench.format_seed_table(result))
    return 0


def cluster_of(args: argparse.Namespace):
    """Where the command's many trainings run, as its flags say (seqmnist.runner.Cluster)."""
    from .runner import Cluster

    jobs = getattr(args, "jobs", 1)
    return Cluster(jobs, args.ray_address, args.cpus_per_trial, args.gpus_per_trial)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .data import MNIST
    from .experiments import reproduce

    seed_models = Path(args.seed_models) if args.seed_models else None
    cluster = cluster_of(args)
    cluster.check()
    reproduce(Path(args.out), MNIST.load(args.data_dir), args.quick, seed_models, cluster)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .data import MNIST
    from .runner import run_trials
    from .sweep import load_grid, result_rows, write_results

    trials, cluster = load_grid(Path(args.grid)), cluster_of(args)
    cluster.check()
    data = MNIST.load(args.data_dir)  # fails here, once, on missing or bad data
    print(f"{len(trials)} trials in {args.out}/runs", flush=True)
    run_trials(trials, Path(args.out), data, cluster)
    csv_path, md_path = write_results(result_rows(trials, Path(args.out)), Path(args.out))
    print(md_path.read_text(), end="")
    print(f"results: {csv_path}, {md_path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import Benchmark, check_tasks, run_benchmark
    from .compare import find_run_dirs
    from .config import QUICK_LOOK
    from .data import MNIST

    tasks = check_tasks(args.tasks.split(","))
    if args.seeds < 1:
        raise SeqmnistError(f"--seeds must be an integer >= 1 (got {args.seeds})")
    overrides = tuple((k, getattr(args, k)) for k in QUICK_LOOK if getattr(args, k))
    benchmark = Benchmark(args.cell, tuple(tasks), args.seeds, overrides)
    for trial in benchmark.trials():
        trial.config()  # the cell, and every setting it takes, checked before any data loads
    for path in args.beside:  # a wrong folder is said before hours of training, not after
        find_run_dirs(Path(path))
    cluster = cluster_of(args)
    cluster.check()
    run_benchmark(benchmark, Path(args.out), MNIST.load(args.data_dir), cluster, [Path(p) for p in args.beside])
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .data import MNIST
    from .tune import tune

    best = tune(Path(args.space), Path(args.out), MNIST.load(args.data_dir), cluster_of(args))
    print(f"best: {best['trial']} (validation accuracy {best['val_acc']:.4f}), {best['run_dir']}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    if args.image:
        return plot_images(args)
    for path in plot_run(Path(args.run_dir), data_dir=args.data_dir, note=note):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    table, paths = compare([Path(p) for p in args.paths], Path(args.out), note=note, frontier=args.frontier)
    print(table, end="")
    for path in paths:
        print(path)
    return 0


def plot_images(args: argparse.Namespace) -> int:
    """``plot RUN --image FILE``: only the figures of the model reading the user's images."""
    from .predict import draw_readings, predict_files
    from .runs import load_run

    trained = load_run(Path(args.run_dir))
    results = predict_files(trained, [Path(p) for p in args.image])
    for path in draw_readings(trained, results, trained.run.dir / "figures", prefix="reading-"):
        print(path)
    return report_failures(results)


def note(message: str) -> None:
    print(f"seqmnist: note: {message}", file=sys.stderr)


def report_failures(results: list[dict]) -> int:
    """Each image that could not be used, one error line each (the others were answered): exit 2 if any."""
    failed = [r for r in results if "error" in r]
    for result in failed:
        print(f"seqmnist: error: {result['error']}", file=sys.stderr)
    return 2 if failed else 0


def check_predict_arguments(run_dir: str, images: list[str]) -> None:
    """``seqmnist predict d8.png``, the run forgotten: say what comes first rather than that IMAGE is
    missing (argparse's words for it), or that d8.png holds no config.json."""
    usage = "seqmnist predict RUN_DIR IMAGE..."
    if Path(run_dir).is_file() or (not images and not Path(run_dir).is_dir()):
        raise SeqmnistError(f"{run_dir}: the first argument is a run directory, then the images: {usage}")
    if not images:
        raise SeqmnistError(f"no IMAGE after the run directory: {usage}")


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import describe_result, draw_readings, predict_files
    from .runs import load_run

    check_predict_arguments(args.run_dir, args.images)
    if not 1 <= args.top <= 10:
        raise SeqmnistError(f"--top must be in 1..10 (got {args.top})")
    trained = load_run(Path(args.run_dir), args.best)
    save = Path(args.save_input) if args.save_input else None
    results = predict_files(trained, [Path(p) for p in args.images], save)
    for result in results:
        if "error" not in result:
            print(json.dumps(result) if args.json else describe_result(result, args.top))
    if args.plot:
        for path in draw_readings(trained, results, Path(args.plot)):
            print(f"figure: {path}", file=sys.stderr if args.json else sys.stdout)
    sys.stdout.flush()  # the answers before the error lines, in a terminal that shows both
    return report_failures(results)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .web.app import serve
    except ImportError as exc:
        raise SeqmnistError(f"serve needs the web extra ({exc.name} is missing): pip install 'seqmnist[web]'") from None
    serve(Path(args.run_dir), args.host, args.port, best=args.best)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .data import MNIST
    from .runs import load_run

    try:
        from .export import export_onnx, onnx_differences
    except ImportError as exc:
        raise SeqmnistError(
            f"export needs the onnx extra ({exc.name} is missing): pip install 'seqmnist[onnx]'"
        ) from None

    if args.check is not None and not 1 <= args.check <= 10000:
        raise SeqmnistError(f"--check must be in 1..10000 test images (got {args.check})")
    trained = load_run(Path(args.run_dir), args.best)
    exported = export_onnx(trained, Path(args.onnx))
    for line in exported.describe():
        print(f"wrote {line}")
    if args.check:
        sys.stdout.flush()
        differences = onnx_differences(exported, trained, MNIST.load(args.data_dir).test_x[: args.check])
        print(
            f"onnxruntime against PyTorch on {args.check:,} test images, every step's belief, largest difference: "
            f"{differences['sequence']:.2e} (whole sequence), {differences['step']:.2e} (step by step)"
        )
    return 0


COMMANDS = {
    "train": cmd_train,
    "presets": cmd_presets,
    "evaluate": cmd_evaluate,
    "import-theano": cmd_import_theano,
    "reproduce": cmd_reproduce,
    "sweep": cmd_sweep,
    "benchmark": cmd_benchmark,
    "tune": cmd_tune,
    "plot": cmd_plot,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "serve": cmd_serve,
    "bench": cmd_bench,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `seqmnist` alone: what it can do, not an error about a missing COMMAND
        parser.print_help()
        return 0
    from .interrupt import TrainingInterrupted

    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except SeqmnistError as exc:
        print(f"seqmnist: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"seqmnist: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("seqmnist: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`seqmnist evaluate RUN --json | head`): stop quietly, as a pipe expects.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
