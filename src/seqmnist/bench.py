"""``seqmnist bench``: the fast path against the plain PyTorch way, in one process and one run.

The machine this was written on is shared and noisy, so every comparison is
interleaved (plain, fast, plain, fast, ...) over several rounds and reported as
the ratio of medians; absolute numbers drift from run to run, ratios much less.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import engine
from .model import INPUT_SIZE, NUM_CLASSES, VanillaRNN


class PlainRNN(nn.Module):
    """The seed's model the way most PyTorch code would write it: nn.RNN, a Linear readout, autograd."""

    def __init__(self, hidden: int = 200):
        super().__init__()
        self.rnn = nn.RNN(INPUT_SIZE, hidden, bias=False, batch_first=True)
        self.readout = nn.Linear(hidden, NUM_CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(x)
        return torch.softmax(self.readout(states), dim=-1).mean(1)


def flops_per_image(rows: int = 28, hidden: int = 200) -> int:
    """Multiply-add work of one training image, forward and backward, counted as 2 FLOPs each.

    Forward: x U, s W, s V per row. Backward: the gradients of s (through W and V)
    and of U, W, V; the gradient of the input is not needed.
    """
    d, h, c = INPUT_SIZE, hidden, NUM_CLASSES
    return 2 * rows * (2 * d * h + 3 * h * h + 3 * h * c)


def gemm_peak(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 multiply rate (GFLOP/s): the best of a few large square multiplies."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_trainer(hidden: int, lr: float = 0.01) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = PlainRNN(hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = -torch.log(model(x).gather(1, y[:, None])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def fast_trainer(hidden: int, lr: float = 0.01, native: bool = True) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The project's training step; with ``native=False``, on the engine's Python loops."""
    model = VanillaRNN(hidden).reset_parameters(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    ws = engine.Workspace(native=native)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = engine.seed_loss(ws, x, y, model.U, model.W, model.V)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


@dataclass
class Comparison:
    batch: int
    hidden: int
    baseline_samples_per_s: float
    samples_per_s: float
    python_loops_samples_per_s: float | None = None  # the fast path without its compiled loops

    @property
    def speedup(self) -> float:
        return self.samples_per_s / self.baseline_samples_per_s

    def gflops(self, rows: int = 28) -> float:
        return self.samples_per_s * flops_per_image(rows, self.hidden) / 1e9


def compare(batch: int, hidden: int, seconds: float, rounds: int = 5, python_loops: bool = False) -> Comparison:
    """Images/s of the plain loop and of the fast path (and, with ``python_loops``, of the fast path on
    its Python loops) on the same synthetic batches, interleaved."""
    g = torch.Generator().manual_seed(0)
    n_batches = 8
    xs = torch.rand(n_batches, batch, 28, INPUT_SIZE, generator=g)
    ys = torch.randint(0, NUM_CLASSES, (n_batches, batch), generator=g)
    trainers = {"plain": plain_trainer(hidden), "fast": fast_trainer(hidden)}
    if python_loops and engine.native_loops() is not None:
        trainers["python"] = fast_trainer(hidden, native=False)
    # Size each timed slice to about seconds / (trainers x rounds) from one warm-up pass.
    per_batch = {}
    for name, step in trainers.items():
        step(xs[0], ys[0])
        per_batch[name] = _seconds(lambda s=step: [s(x, y) for x, y in zip(xs, ys, strict=True)]) / n_batches
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, step in trainers.items():
            count = max(3, round(seconds / (len(trainers) * rounds) / per_batch[name]))
            elapsed = _seconds(lambda s=step, k=count: [s(xs[i % n_batches], ys[i % n_batches]) for i in range(k)])
            rates[name].append(count * batch / elapsed)
    python = statistics.median(rates["python"]) if "python" in rates else None
    return Comparison(batch, hidden, statistics.median(rates["plain"]), statistics.median(rates["fast"]), python)


SCALING = ((256, 200), (1024, 200), (100, 512))


def run(seconds: float = 24.0, scaling_seconds: float = 5.0) -> dict:
    """The whole benchmark: peak, the seed shape (batch 100, hidden 200), then the scaling shapes."""
    peak = gemm_peak()
    main = compare(100, 200, seconds, python_loops=True)
    scaling = [compare(b, h, scaling_seconds, rounds=3) for b, h in SCALING]
    peak = max(peak, gemm_peak())  # measured again after the load, the better of the two
    gflops = main.gflops()
    return {
        "batch": 100,
        "hidden": 200,
        "rows": 28,
        "flops_per_image": flops_per_image(),
        "gemm_peak_gflops": peak,
        "samples_per_s": main.samples_per_s,
        "baseline_samples_per_s": main.baseline_samples_per_s,
        "speedup": main.speedup,
        "gflops": gflops,
        "baseline_gflops": main.baseline_samples_per_s * flops_per_image() / 1e9,
        "peak_fraction": gflops / peak,
        "python_loops_samples_per_s": main.python_loops_samples_per_s,
        "native": engine.native_loops() is not None,  # false: "fast" ran on the Python loops
        "threads": torch.get_num_threads(),
        "scaling": [
            {
                "batch": c.batch,
                "hidden": c.hidden,
                "samples_per_s": c.samples_per_s,
                "baseline_samples_per_s": c.baseline_samples_per_s,
                "speedup": c.speedup,
                "gflops": c.gflops(),
                "peak_fraction": c.gflops() / peak,
            }
            for c in [main, *scaling]
        ],
    }


def format_table(result: dict) -> str:
    peak = result["gemm_peak_gflops"]
    lines = [
        f"float32 multiply peak (2048x2048, torch): {peak:.0f} GFLOP/s on {result['threads']} threads",
        f"work per training image (28 rows): {result['flops_per_image'] / 1e6:.2f} MFLOP",
        "",
        f"{'batch':>5} {'hidden':>6} {'path':>6} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'speedup':>8}",
    ]
    for row in result["scaling"]:
        paths = [("plain", row["baseline_samples_per_s"]), ("fast", row["samples_per_s"])]
        python = result["python_loops_samples_per_s"]
        if python and (row["batch"], row["hidden"]) == (result["batch"], result["hidden"]):
            paths.insert(1, ("python", python))
        for path, rate in paths:
            gf = rate * flops_per_image(28, row["hidden"]) / 1e9
            speedup = "" if path == "plain" else f"{rate / row['baseline_samples_per_s']:.2f}x"
            lines.append(
                f"{row['batch']:>5} {row['hidden']:>6} {path:>6} {rate:>9.0f} {gf:>8.1f} {gf / peak:>8.0%} {speedup:>8}"
            )
    lines.append("")
    if result["native"]:
        lines.append("python: the fast path on its Python loops (what it does where engine.cpp cannot be built)")
    else:
        lines.append("fast: on its Python loops here (engine.cpp did not build)")
    return "\n".join(lines)
