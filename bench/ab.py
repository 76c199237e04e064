"""Two revisions of seqmnist side by side, on the seed's preset: did a change keep its speed?

Checks both revisions out into temporary git worktrees, runs each with this environment's Python
(PYTHONPATH pointing at its src/), alternating, and reports medians: `seqmnist bench`'s training
step (images/s at batch 100, hidden 200) and a whole seed epoch (`train --preset seed --epochs 1`:
training plus accuracy on the 50,000 + 10,000 images), at each of `--rows` (28, the seed's, unless
told; `reproduce` trains 2, 4, ... 28, and the sum over them is what its time sees). Also checks both
give the same models, byte for byte, on the same thread count. Usage:

    python bench/ab.py OLD_REV [NEW_REV (default: the working tree)] [--rounds 3] [--seconds 12]
                       [--rows 28 ...]
    python bench/ab.py OLD_REV [NEW_REV] --all [--rounds 3] [--seconds 12]
    python bench/ab.py OLD_REV [NEW_REV] --preset pixel-lru pixel-s4d [--keep-freed-memory] [--rounds 3]

With ``--all``: each cell's training step as `seqmnist bench --all` times it ("ours", on rows and on
pixel; bench/ours.py, without bench's plain PyTorch loops), in each revision, alternating, new against
old for the cells both revisions have: did a refactoring slow any cell down? With ``--preset``, the same
for the named presets' own models, tasks and batches (the "task" column names the preset).
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True, capture_output=True
    )
    return where / "src"


def run(src: Path, *args: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """``seqmnist ARGS`` (or ``python SCRIPT ARGS``) on the revision whose src/ is ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    command = [sys.executable, *([str(script)] if script else ["-m", "seqmnist.cli"]), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{src}: {' '.join(command[1:])} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result


def seed_epoch(src: Path, out: Path, rows: int) -> tuple[float, str]:
    """Seconds of one seed epoch (as its metrics.csv records them) and the model's SHA-256."""
    run(src, "train", "--preset", "seed", "--rows", str(rows), "--epochs", "1", "--out", str(out))
    seconds = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[-1])
    return seconds, hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def every_cell(sources: dict[str, Path], args: argparse.Namespace) -> None:
    """Each (cell, task) of `bench --all`, or each preset: ours' images/s in each revision, medians over
    alternating rounds."""
    rates: dict[tuple[str, str, str], list[float]] = {}
    flags = ["--seconds", str(args.seconds)] + (["--preset", *args.preset] if args.preset else [])
    flags += ["--keep-freed-memory"] if args.keep_freed_memory else []
    for _ in range(args.rounds):
        for name, src in sources.items():
            result = run(src, *flags, script=ROOT / "bench" / "ours.py")
            for row in json.loads(result.stdout):
                rates.setdefault((row["cell"], row["task"], name), []).append(row["samples_per_s"])
    print(f"old: {args.old}, new: {args.new or 'working tree'}, {args.rounds} alternating rounds of bench/ours.py")
    print(f"{'cell':<9} {'task':<12} {'old images/s':>13} {'new images/s':>13} {'new/old':>8}")
    for cell, task, name in rates:
        if name == "old" and (cell, task, "new") in rates:
            old = statistics.median(rates[cell, task, "old"])
            new = statistics.median(rates[cell, task, "new"])
            print(f"{cell:<9} {task:<12} {old:>13.0f} {new:>13.0f} {new / old:>7.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rows", type=int, nargs="+", default=[28])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--all", action="store_true", help="every cell's step (seqmnist bench --all), not the seed's")
    parser.add_argument("--preset", nargs="+", help="these presets' steps (bench/ours.py --preset), not the seed's")
    parser.add_argument("--keep-freed-memory", action="store_true", help="both as train runs (bench/ours.py's flag)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        root = Path(tmp)
        sources = {"old": checkout(args.old, root / "old")}
        sources["new"] = checkout(args.new, root / "new") if args.new else ROOT / "src"
        try:
            if args.all or args.preset:
                return every_cell(sources, args)
            step = {name: [] for name in sources}
            epoch = {(name, rows): [] for name in sources for rows in args.rows}
            models = {name: set() for name in sources}
            for i in range(args.rounds):
                for name, src in sources.items():
                    bench = json.loads(run(src, "bench", "--json", "--seconds", str(args.seconds)).stdout)
                    step[name].append(bench["samples_per_s"])
                    for rows in args.rows:
                        seconds, digest = seed_epoch(src, root / f"{name}-{rows}-{i}", rows)
                        epoch[name, rows].append(seconds)
                        models[name].add((rows, digest))
        finally:
            for name in ("old", "new"):
                if (root / name).exists():
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(root / name)], capture_output=True
                    )
    medians = {key: statistics.median(v) for key, v in epoch.items()}
    result = {
        "old": args.old,
        "new": args.new or "working tree",
        "step_images_per_s": {n: statistics.median(v) for n, v in step.items()},
        "seed_epoch_s": {n: sum(medians[n, rows] for rows in args.rows) for n in sources},
        "epoch_ratio_by_rows": {rows: medians["old", rows] / medians["new", rows] for rows in args.rows},
        "same_model": models["old"] == models["new"] and len(models["old"]) == len(args.rows),
    }
    result["step_ratio"] = result["step_images_per_s"]["new"] / result["step_images_per_s"]["old"]
    result["epoch_ratio"] = result["seed_epoch_s"]["old"] / result["seed_epoch_s"]["new"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"old: {result['old']}, new: {result['new']}, {args.rounds} interleaved rounds")
    for key, unit in (("step_images_per_s", "images/s"), ("seed_epoch_s", "s")):
        old, new = result[key]["old"], result[key]["new"]
        print(f"  {key:<18} old {old:9.1f} {unit:<8} new {new:9.1f} {unit}")
    if len(args.rows) > 1:
        by_rows = ", ".join(f"K={k} {r:.3f}x" for k, r in result["epoch_ratio_by_rows"].items())
        print(f"  seed epoch new/old by rows K: {by_rows}; seed_epoch_s is their sum")
    print(f"  new/old speed: training step {result['step_ratio']:.3f}x, seed epoch {result['epoch_ratio']:.3f}x")
    print(f"  same model after one seed epoch at each K, byte for byte: {result['same_model']}")


if __name__ == "__main__":
    main()
