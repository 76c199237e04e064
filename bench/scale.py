"""One grid, three ways, side by side in one run: a Ray cluster with one worker node, the same with
two, and the local process pool. Each starts from an empty --out; the Ray nodes are real `ray start`
processes on loopback (a head without CPUs of its own and one-CPU workers), stopped at the end.

    python bench/scale.py [--trials 4] [--epochs 2] [--subset 10000] [--json]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray(*args: str) -> None:
    subprocess.run([RAY, *args], env=ENV, check=True, capture_output=True, timeout=300)


def sweep(grid: Path, out: Path, *extra: str) -> float:
    """Wall seconds of `seqmnist sweep`, start to finish."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "seqmnist.cli", "sweep", str(grid), "--out", str(out), *extra]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        root = Path(tmp)
        grid = root / "grid.toml"
        seeds = ", ".join(str(s) for s in range(1, args.trials + 1))
        grid.write_text(
            f'[settings]\npreset = "quick"\nepochs = {args.epochs}\nsubset = {args.subset}\n[grid]\nseed = [{seeds}]\n'
        )
        port = free_port()
        address = f"127.0.0.1:{port}"
        common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        seconds = {}
        try:
            ray(
                "start",
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "0",
                "--include-dashboard",
                "false",
                "--temp-dir",
                str(root / "ray"),
                *common,
            )
            ray("start", "--address", address, "--num-cpus", "1", *common)
            seconds["ray, 1 worker"] = sweep(grid, root / "one", "--ray-address", address)
            ray("start", "--address", address, "--num-cpus", "1", *common)
            seconds["ray, 2 workers"] = sweep(grid, root / "two", "--ray-address", address)
        finally:
            subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)
        seconds["local pool, --jobs 2"] = sweep(grid, root / "local", "--jobs", "2")
        seconds["this process, --jobs 1"] = sweep(grid, root / "serial", "--jobs", "1")

    result = {"trials": args.trials, "epochs": args.epochs, "subset": args.subset, "seconds": seconds}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.trials} trials of {args.epochs} epochs on {args.subset} images (preset quick), wall time:")
    one = seconds["ray, 1 worker"]
    for name, wall in seconds.items():
        print(f"  {name:<24} {wall:7.1f} s   {one / wall:4.2f}x the 1-worker cluster")


if __name__ == "__main__":
    main()
