"""Whole seed epochs and whole processes: seqmnist train against bench/plain_pytorch.py.

Each side runs as its own process, alternating, so both see the same machine
conditions; reported are the median epoch time (training plus accuracy on the
training and validation sets), the median wall time of the whole process
(start-up and data loading included) and the peak resident memory. Usage:

    python bench/epoch.py [--epochs 2] [--repeats 2] [--json]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EPOCH_LINE = re.compile(r"^epoch\s+\d+/\d+\s.*\s([\d.]+)s$", re.MULTILINE)


def measure(command: list[str]) -> dict:
    """Wall time, peak resident memory (from the kernel's accounting) and the per-epoch seconds printed."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
    if status != 0:
        sys.exit(f"{' '.join(command)} failed: {process.stderr.read().strip().splitlines()[-1:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "epoch_s": [float(s) for s in EPOCH_LINE.findall(stdout)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "plain": [sys.executable, str(HERE / "plain_pytorch.py"), "--epochs", str(args.epochs)],
            "fast": [sys.executable, "-m", "seqmnist.cli", "train", "--epochs", str(args.epochs), "--out"],
        }
        runs = {"plain": [], "fast": []}
        for i in range(args.repeats):
            runs["plain"].append(measure(commands["plain"]))
            runs["fast"].append(measure([*commands["fast"], f"{tmp}/run{i}"]))

    result = {"epochs": args.epochs, "repeats": args.repeats}
    for name, measured in runs.items():
        result[f"{name}_epoch_s"] = statistics.median(s for m in measured for s in m["epoch_s"])
        result[f"{name}_process_s"] = statistics.median(m["wall_s"] for m in measured)
        result[f"{name}_peak_rss_mb"] = max(m["peak_rss_mb"] for m in measured)
    result["epoch_speedup"] = result["plain_epoch_s"] / result["fast_epoch_s"]
    result["process_speedup"] = result["plain_process_s"] / result["fast_process_s"]
    if args.json:
        print(json.dumps(result))
        return
    table = [
        ("seed epoch (s)", "epoch_s", f"{result['epoch_speedup']:.2f}x"),
        (f"{args.epochs}-epoch process (s)", "process_s", f"{result['process_speedup']:.2f}x"),
        ("peak memory (MB)", "peak_rss_mb", ""),
    ]
    print(f"{'':>22} {'plain':>8} {'fast':>8} {'speedup':>8}")
    for label, key, speedup in table:
        print(f"{label:>22} {result['plain_' + key]:>8.2f} {result['fast_' + key]:>8.2f} {speedup:>8}")


if __name__ == "__main__":
    main()
