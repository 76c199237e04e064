"""The ``seqmnist`` command line. Parsing and printing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory with the four MNIST IDX files (default: $SEQMNIST_DATA, else a download cache)",
    )


def preset_help() -> str:
    from .config import PRESETS

    return "named settings that other flags override: " + "; ".join(f"{n}: {p.about}" for n, p in PRESETS.items())


def build_parser() -> Parser:
    from .config import DEVICES, ENGINES, PRESETS, RNGS

    parser = Parser(prog="seqmnist", description="Classify MNIST digits with a recurrent network that reads rows.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('seqmnist')}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model (the seed's recipe by default)")
    train.add_argument("--preset", choices=PRESETS, help=preset_help() + " (default: seed)")
    train.add_argument(
        "--epochs",
        type=int,
        help="passes over the training set (seed: 100); with --resume: train the run on to this many epochs",
    )
    train.add_argument("--rows", type=int, help="rows of each image the RNN reads, 1..28 (seed: 28)")
    train.add_argument("--hidden", type=int, help="hidden units (seed: 200)")
    train.add_argument("--lr", type=float, help="SGD learning rate (seed: 0.01)")
    train.add_argument("--batch-size", type=int, help="images per SGD step (seed: 100)")
    train.add_argument("--seed", type=int, help="seed of the initial weights and the shuffles (seed: 12345)")
    train.add_argument(
        "--rng",
        choices=RNGS,
        help="seed: NumPy's stream as the seed's code drew from it; "
        "torch: a torch.Generator, and each epoch's order from (seed, epoch) (seed: seed)",
    )
    train.add_argument(
        "--input-scale",
        type=int,
        choices=(255, 256),
        help="pixel = byte / this (seed: 256, as its mnist.pkl.gz; 255 elsewhere)",
    )
    train.add_argument("--subset", type=int, help="train on the first N training images only")
    train.add_argument(
        "--engine",
        choices=ENGINES,
        help="fast (hand-written BPTT, default) or autograd (the plain definition, for training and evaluation)",
    )
    train.add_argument("--device", choices=DEVICES, help="where to train (default: auto)")
    train.add_argument(
        "--eval-every",
        type=int,
        help="accuracy on the training/validation sets every N epochs, and after the last (1)",
    )
    train.add_argument("--out", metavar="RUN_DIR", help="where the run's files go (default: runs/<preset>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run with its saved settings")
    add_data_flag(train)

    evaluate = commands.add_parser("evaluate", help="test accuracy and confusion matrix of a trained run")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from train or import-theano)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_flag(evaluate)

    importer = commands.add_parser("import-theano", help="make a run directory of a model file of the seed's code")
    importer.add_argument("model_file", metavar="MODEL_FILE", help="rnn_stepK.model, as the seed's code wrote it")
    importer.add_argument("--rows", type=int, required=True, help="the rows K it was trained to read")
    importer.add_argument("--out", metavar="RUN_DIR", required=True, help="the run directory to create")
    add_data_flag(importer)

    reproduce = commands.add_parser("reproduce", help="redo the seed's experiments; figures and report.md")
    reproduce.add_argument("--out", metavar="DIR", default="reproduction", help="output directory (reproduction)")
    reproduce.add_argument("--quick", action="store_true", help="a few epochs on a subset: a first look, same files")
    reproduce.add_argument("--jobs", type=int, default=1, help="sweep members trained in parallel processes (1)")
    reproduce.add_argument(
        "--seed-models", metavar="DIR", help="a directory of the seed's rnn_stepK.model files to evaluate beside ours"
    )
    add_data_flag(reproduce)

    plot = commands.add_parser("plot", help="figures of one run: curves, confusion matrix, weights, row by row")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    add_data_flag(plot)

    bench = commands.add_parser("bench", help="training speed: multiply peak, plain PyTorch loop, fast path")
    bench.add_argument("--seconds", type=float, default=24.0, help="timing budget of the main comparison (24)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


SETTINGS = (
    "epochs",
    "rows",
    "hidden",
    "lr",
    "batch_size",
    "seed",
    "rng",
    "input_scale",
    "subset",
    "engine",
    "device",
    "eval_every",
)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .data import MNIST
    from .runs import new_run, open_for_resume
    from .train import train

    if args.resume:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("preset", *SETTINGS, "out")
            if name != "epochs" and getattr(args, name) is not None
        ]
        if given:
            raise SeqmnistError(f"--resume uses the settings saved in the run; drop {', '.join(given)}")
        run, config = open_for_resume(Path(args.resume), args.epochs)
    else:
        config = Config.from_settings(args.preset or "seed", **{name: getattr(args, name) for name in SETTINGS})
        run = new_run(Path(args.out or f"runs/{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"))
    train(config, MNIST.load(args.data_dir), run, resume=bool(args.resume))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import Config
    from .data import MNIST
    from .runs import Run
    from .train import evaluate_test

    run = Run(Path(args.run_dir))
    config = Config.from_file(run.config)
    model = run.load_model(config)
    result = evaluate_test(model, MNIST.load(args.data_dir), config)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"test accuracy {result['test_acc']:.4f} with every row read ({config.rows} rows); "
        f"{result['test_acc_as_seed']:.4f} as the seed's code measured"
    )
    print("confusion matrix (rows: true digit, columns: predicted digit)")
    print("     " + "".join(f"{d:>6}" for d in range(10)))
    for digit, counts in enumerate(result["confusion_matrix"]):
        print(f"{digit:>5}" + "".join(f"{c:>6}" for c in counts))
    return 0


def cmd_import_theano(args: argparse.Namespace) -> int:
    from .experiments import import_theano

    summary = import_theano(Path(args.model_file), args.rows, Path(args.out), data_dir=args.data_dir)
    print(
        f"imported {args.model_file} into {args.out}: test accuracy {summary['test_acc']:.4f} with every row "
        f"read, {summary['test_acc_as_seed']:.4f} as the seed's code measured"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if not 0 < args.seconds <= 3600:
        raise SeqmnistError(f"--seconds must be in (0, 3600] (got {args.seconds})")
    result = bench.run(seconds=args.seconds, scaling_seconds=args.seconds / 5)
    print(json.dumps(result) if args.json else bench.format_table(result))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import reproduce

    seed_models = Path(args.seed_models) if args.seed_models else None
    reproduce(Path(args.out), quick=args.quick, jobs=args.jobs, data_dir=args.data_dir, seed_models=seed_models)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .experiments import plot_run

    for path in plot_run(Path(args.run_dir), data_dir=args.data_dir):
        print(path)
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "import-theano": cmd_import_theano,
    "reproduce": cmd_reproduce,
    "plot": cmd_plot,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import TrainingInterrupted

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
