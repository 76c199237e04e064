"""A trained run's recurrent mode against its parallel form, on MNIST's own test images.

    python scripts/recurrent_agreement.py RUN_DIR... [--count N]     # the first N test images (1,000)

For each run (its best-validation weights): the per-step logits of ``model.logits`` (the parallel form
training and evaluation use: for the linear cells the compiled scan and gate) and of ``model.advance``
one input at a time (what ``predict``'s trace and the step-by-step export compute), read out by the run's
readout in float64 as evaluation does. Prints whether every label is the same, the largest difference
of a probability, and the accuracy; exits 1 if the labels differ or a probability is off by 1e-5 or more,
2 (one line) if a run or the data cannot be read.
"""

from __future__ import annotations

import argparse
import sys

import torch

from seqmnist import MNIST, load_run
from seqmnist.errors import SeqmnistError


def agreement(run: str, images: torch.Tensor, truth: torch.Tensor) -> bool:
    """Prints one run's line; whether its two modes agree."""
    trained = load_run(run, best=True)
    x = trained.sequencer.encode(images)
    with torch.no_grad():
        parallel, stepped = trained.model.logits(x), trained.model.stepped_logits(x)
    readout = trained.model.readout
    fast, slow = (torch.softmax(readout.scores(z.double()), dim=-1) for z in (parallel, stepped))
    same = torch.equal(fast.argmax(1), slow.argmax(1))
    difference = (fast - slow).abs().max().item()
    accuracy = (fast.argmax(1) == truth).double().mean().item()
    print(f"{run}: {len(images)} images, labels the same: {same}, largest probability difference "
          f"{difference:.2e}, accuracy {accuracy:.2%}")  # fmt: skip
    return same and difference < 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    if not 1 <= args.count <= 10_000:
        parser.error(f"--count must be in 1..10000 (got {args.count})")
    try:
        data = MNIST.load()
        images, truth = data.test_x[: args.count], data.test_y[: args.count]
        agreed = [agreement(run, images, truth) for run in args.runs]
    except SeqmnistError as exc:
        print(f"recurrent_agreement: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if all(agreed) else 1)


if __name__ == "__main__":
    main()
