"""What does skipping the blank leading rows buy the seed's experiments?

Without a bias, a recurrent state stays exactly zero until an image's first inked row, so the CPU
engine leaves those steps out (engine.cpp's ActiveRows) and computes the same bits. This script
measures, for each K of `seqmnist reproduce` (the seed's preset, one thread, as each worker runs),
a slice of an epoch with and without the skipping, alternating: `--batches` training batches of
100 in a random order, then accuracy on `--images` training and validation images (the epoch's
evaluation). It reports each K's ratio and the ratio of the sums, which is what the reproduction's
wall time should see. It also checks that the two ways end with the same weights, bit for bit.
Usage (SEQMNIST_DATA set as for training):

    python bench/blank_rows.py [--rows 2 4 ... 28] [--rounds 3] [--batches 50] [--images 6000]
"""

import argparse
import statistics
import time

import torch

from seqmnist import engine
from seqmnist.config import Config
from seqmnist.data import MNIST
from seqmnist.evaluation import accuracy
from seqmnist.recipes import make_optimizer
from seqmnist.train import initial_model, train_step


def epoch_slice(config: Config, x, y, xe, ye, order, batches: int, skip: bool) -> tuple[float, list[torch.Tensor]]:
    """Seconds for the slice from the seed's initial weights, and the weights it ends with."""
    model, _ = initial_model(config)
    model.workspaces = engine.Workspaces(skip_blank=skip)
    optimizer = make_optimizer(model, config.recipe, own_step=True)
    started = time.perf_counter()
    for b in range(batches):
        index = order[b * 100 : (b + 1) * 100]
        train_step(model, optimizer, x[index], y[index])
    accuracy(model, xe, ye, config, "val", None)
    return time.perf_counter() - started, [p.detach().clone() for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(2, 29, 2)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--images", type=int, default=6000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = MNIST.load()
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    totals = {False: 0.0, True: 0.0}
    print(f"{args.batches} batches + accuracy on {args.images} images, median of {args.rounds}, one thread")
    for rows in args.rows:
        config = Config.from_settings("seed", rows=rows)
        sequencer = config.task.sequencer()
        x = sequencer.encode(data.train_x)
        share = args.images * 5 // 6
        xe = torch.cat([x[:share], sequencer.encode(data.val_x[: args.images - share])])
        ye = torch.cat([data.train_y[:share], data.val_y[: args.images - share]])
        seconds, weights = {False: [], True: []}, {}
        for _ in range(args.rounds):
            for skip in (False, True):
                elapsed, weights[skip] = epoch_slice(config, x, data.train_y, xe, ye, order, args.batches, skip)
                seconds[skip].append(elapsed)
        same = all(torch.equal(a, b) for a, b in zip(weights[False], weights[True], strict=True))
        median = {skip: statistics.median(s) for skip, s in seconds.items()}
        for skip in totals:
            totals[skip] += median[skip]
        print(
            f"K = {rows:2d}: {median[False]:6.3f} s computing every row, {median[True]:6.3f} s skipping blank ones:"
            f" {median[False] / median[True]:.2f}x; same weights: {same}"
        )
    print(f"all K, summed: {totals[False]:.2f} s against {totals[True]:.2f} s: {totals[False] / totals[True]:.3f}x")


if __name__ == "__main__":
    main()
