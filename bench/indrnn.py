"""How fast an IndRNN trains, by each of its paths, on the pixel task's shapes and the rows task's.

One training step (forward, the ``last`` readout's loss, backward) on a batch of training images, timed in interleaved
rounds, medians reported:

    engine           today's compiled engine (engine.cpp): a step loop, one multiply per step and layer
    parallel         one multiply per layer over all steps, then scan.cpp's relu scan (model.loss:
                     the logits of the last step alone)
    parallel loop    the same multiply, then the recurrence a step at a time in PyTorch (every step's logits)
    definition       the plain autograd definition, step by step (x_t U inside the loop)

and the seconds an epoch (50,000 images) would take each way. With ``--norm batch`` or ``--dropout``
(which the engine has not) the parallel paths alone, in training mode: the IndRNN recipe's cost. Usage:

    python bench/indrnn.py [--task pixel] [--layers 6] [--hidden 128] [--batch 32] [--rounds 5]
    python bench/indrnn.py --norm batch --dropout 0.1 --skip definition    # the recipe's step
"""

import argparse
import dataclasses
import statistics
import time

import torch

from seqmnist import engine
from seqmnist.cells.elementwise import IndRNN, step_loop
from seqmnist.data import MNIST, TRAIN_IMAGES
from seqmnist.model import Draws, ModelSpec, build_model
from seqmnist.sequence import SIDE, Sequencer


def ways(model: IndRNN, skip: set[str]) -> dict:
    """Each way's loss of a batch."""
    readout = model.readout

    def engine_loss(x, y):
        return engine.layers_loss(model.workspaces.get(), x, y, model.engine_weights(), "relu", model.spec.readout)

    candidates = {
        "engine": engine_loss,
        "parallel": model.loss,
        "parallel loop": lambda x, y: readout.loss(model.parallel_logits(x, step_loop), y),
        "definition": lambda x, y: readout.loss(model.definition(x), y),
    }
    return {name: loss for name, loss in candidates.items() if name not in skip}


def training_step(model: IndRNN, loss, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one forward and backward pass."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    loss(x, y).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("pixel", "rows"), default="pixel")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--norm", choices=("none", "batch"), default="none")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], help="ways not to time (e.g. definition)")
    parser.add_argument(
        "--flush-denormal",
        action="store_true",
        help="flush subnormal floats to zero (this thread only: use with OMP_NUM_THREADS=1); at a fresh "
        "initialisation they slow the engine's backward pass ~10x on the pixel task, less once trained",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(args.flush_denormal)

    data = MNIST.load()  # real images: how many gradients underflow, and where, depends on them
    task = "rows" if args.task == "rows" else "pixel"
    sequencer = Sequencer(task, SIDE, SIDE if task == "rows" else 1, input_scale=255)
    x, y = sequencer.encode(data.train_x[: args.batch]), data.train_y[: args.batch]
    steps, inputs = x.shape[1:]
    spec = ModelSpec("indrnn", inputs, args.hidden, args.layers, True, "last", steps=steps, norm=args.norm)
    spec = dataclasses.replace(spec, dropout=args.dropout)
    model = build_model(spec).init_weights(Draws(torch.Generator().manual_seed(0)))
    model.train(model.layer_parallel())
    candidates = ways(model, set(args.skip) | ({"engine"} if model.layer_parallel() else set()))
    print(
        f"indrnn: batch {args.batch}, {steps} steps of {inputs}, {args.layers} layers of {args.hidden}, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds"
    )
    for loss in candidates.values():  # warm-up: allocations, the engine's first load
        training_step(model, loss, x, y)
    times = {name: [] for name in candidates}
    names = list(candidates)
    for turn in range(args.rounds):  # each round starts one way later: none always follows the same one
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            times[name].append(training_step(model, candidates[name], x, y))
    batches = TRAIN_IMAGES // args.batch
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {name:<14} {median * 1000:9.1f} ms a step   {median * batches:7.0f} s an epoch of {batches} batches")


if __name__ == "__main__":
    main()
