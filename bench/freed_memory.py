"""What `machine.keep_freed_memory` (which `train` calls on the CPU) is worth: a preset's training step
in fresh processes, alternating with and without it, medians of seconds a step and of page faults.

A pixel batch's activations are tensors of tens of MB; by default glibc maps each afresh and the
kernel zeroes its pages at first touch. `seqmnist bench` runs both sides with the setting (it is the
process's); ``--plain`` times the plain PyTorch loop's step instead of ours, to see what that does to it.
Usage:

    python bench/freed_memory.py [--preset pixel-lru] [--steps 8] [--rounds 3] [--plain]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, resource, sys, time, torch
from seqmnist.bench import our_trainer, plain_trainer
from seqmnist.config import Config
from seqmnist.machine import keep_freed_memory
preset, steps, keep, plain = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "keep", sys.argv[4] == "plain"
if keep:
    keep_freed_memory()
config = Config.from_settings(preset)
spec = config.model_spec()
step = plain_trainer(spec) if plain else our_trainer(spec)
x = torch.rand(config.recipe.batch_size, spec.steps, spec.inputs, generator=torch.Generator().manual_seed(0))
y = torch.randint(0, 10, (config.recipe.batch_size,), generator=torch.Generator().manual_seed(1))
step(x, y)
faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for _ in range(steps):
    step(x, y)
seconds = (time.perf_counter() - start) / steps
print(json.dumps({"seconds": seconds, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pixel-lru")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="the plain PyTorch loop's step (bench's), not ours")
    args = parser.parse_args()
    side = "plain" if args.plain else "ours"
    results: dict[str, list[dict]] = {"default": [], "keep": []}
    for _ in range(args.rounds):
        for mode in results:
            command = [sys.executable, "-c", STEP, args.preset, str(args.steps), mode, side]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=True)
            results[mode].append(json.loads(done.stdout))
    medians = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "faults")} for m, rs in results.items()}
    for mode, median in medians.items():
        print(f"{mode:<8} {median['seconds']:.3f} s a step, {median['faults']:,.0f} page faults a step")
    speedup = medians["default"]["seconds"] / medians["keep"]["seconds"]
    print(f"{args.preset} ({side}): keep_freed_memory {speedup:.3f}x faster")


if __name__ == "__main__":
    main()
