"""Images/s of one checkout's own training step on each (cell, task) of `seqmnist bench --all`, or on
named presets' models, tasks and batches (`--preset`), as JSON.

`bench/ab.py --all` runs this in two revisions (PYTHONPATH says which), alternating, to ask whether a
refactoring slowed a cell down. It times what `bench --all` calls "ours" (`bench.our_trainer` on
`bench.matrix_configs()`, the same synthetic batches) and leaves out the plain PyTorch loops, which take
most of `bench --all`'s time (784 steps of autograd a batch on the pixel task) and are not what changed.
"""

import argparse
import json
import time

import torch

from seqmnist.bench import matrix_configs, our_trainer, preset_configs
from seqmnist.model import ModelSpec

CLASSES = 10


def images_per_s(spec: ModelSpec, batch: int, seconds: float) -> float:
    """The training step's rate on 4 fixed synthetic batches, after one warm-up step. (bench.compare's
    batches, rebuilt here from names every revision has: this script runs against older code.)"""
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(4, batch, spec.steps, spec.inputs, generator=g)
    ys = torch.randint(0, CLASSES, (4, batch), generator=g)
    step = our_trainer(spec)
    step(xs[0], ys[0])
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        step(xs[count % 4], ys[count % 4])
        count += 1
    return count * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per (cell, task)")
    parser.add_argument("--preset", nargs="+", help="these presets' models, tasks and batches instead")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="as train runs on the CPU (machine.keep_freed_memory)"
    )
    args = parser.parse_args()
    if args.keep_freed_memory:
        from seqmnist.machine import keep_freed_memory  # not in revisions before 2026-12-02

        keep_freed_memory()
    rates = []
    for config in preset_configs(args.preset, {}) if args.preset else matrix_configs():
        spec = config.model_spec()
        task = config.preset if args.preset else "rows" if spec.steps == 28 else "pixel"
        rate = images_per_s(spec, config.recipe.batch_size, args.seconds)
        rates.append({"cell": spec.cell, "task": task, "samples_per_s": rate})
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
