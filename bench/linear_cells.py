"""How fast the linear recurrent cells train on the pixel task, against the plain PyTorch ways.

For each cell (lru, s4d) one training step (forward, the ``last`` readout's loss, backward) on a
batch of the pixel task's shape, timed three ways in interleaved rounds, medians reported:

    ours             model.logits: LRU by the compiled scan (scan.cpp), S4D by its FFT convolution
    step loop        the definition: one state update per step in PyTorch, as a user would write it
    plain parallel   LRU: the log-depth scan in PyTorch operations; S4D: s4d.py's forward as written
                     (state-spaces/s4, models/s4/s4d.py: complex Vandermonde kernel, FFT over a
                     transposed view)

and the seconds a pixel epoch (600 batches) would take each way. Usage:

    python bench/linear_cells.py [--cells lru s4d] [--rounds 5] [--profile]
"""

import argparse
import statistics
import time

import torch

from seqmnist.linear import LRU, S4D, LinearRecurrentClassifier, S4DLayer, log_depth_scan
from seqmnist.model import Draws, ModelSpec, readout_loss

CELLS = {"lru": LRU, "s4d": S4D}
BATCHES_PER_EPOCH = 600  # a pixel epoch as the issue counts it: 60,000 images in batches of 100


def s4d_as_written(mixer: S4DLayer, u: torch.Tensor) -> torch.Tensor:
    """s4d.py's S4D.forward (transposed=False) and S4DKernel.forward, on this layer's parameters."""
    u = u.transpose(-1, -2)
    L = u.size(-1)
    dt = torch.exp(mixer.log_dt)
    C = torch.complex(mixer.C[0], mixer.C[1])
    A = -torch.exp(mixer.log_A_real) + 1j * mixer.A_imag
    dtA = A * dt.unsqueeze(-1)
    K = dtA.unsqueeze(-1) * torch.arange(L)
    C = C * (torch.exp(dtA) - 1.0) / A
    k = 2 * torch.einsum("hn, hnl -> hl", C, torch.exp(K)).real
    k_f = torch.fft.rfft(k, n=2 * L)
    u_f = torch.fft.rfft(u, n=2 * L)
    y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]
    y = y + u * mixer.D.unsqueeze(-1)
    return y.transpose(-1, -2)


def plain_parallel_logits(model: LinearRecurrentClassifier, x: torch.Tensor) -> torch.Tensor:
    """The model's parallel form with the plain PyTorch recurrence in place of ours."""
    u = model.encoder(x)
    for block in model.blocks:
        z = block.norm(u)
        y = block.mixer.scanned(z, log_depth_scan) if isinstance(model, LRU) else s4d_as_written(block.mixer, z)
        u = u + block.after(y)
    return model.decoder(u).transpose(0, 1)


def ways(model: LinearRecurrentClassifier) -> dict:
    return {
        "ours": model.logits,
        "step loop": model.definition,
        "plain parallel": lambda x: plain_parallel_logits(model, x),
    }


def training_step(model: LinearRecurrentClassifier, logits, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one forward and backward pass."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    readout_loss("last", logits(x), y).backward()
    return time.perf_counter() - start


def build(cell: str, args: argparse.Namespace) -> LinearRecurrentClassifier:
    spec = ModelSpec(cell, 1, args.hidden, args.layers, True, "last", steps=args.steps)
    return CELLS[cell](spec, state=args.state).init_weights(Draws(torch.Generator().manual_seed(0)))


def check_agreement(model: LinearRecurrentClassifier, x: torch.Tensor) -> float:
    """The largest difference between ours and the plain parallel form's logits (float32)."""
    with torch.no_grad():
        return (model.logits(x) - plain_parallel_logits(model, x)).abs().max().item()


def profile(model: LinearRecurrentClassifier, x: torch.Tensor, y: torch.Tensor) -> None:
    training_step(model, model.logits, x, y)
    with torch.profiler.profile() as prof:
        training_step(model, model.logits, x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--state", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=784)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also where ours spends a step, by operation")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, args.steps, 1, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    print(
        f"batch {args.batch}, {args.steps} steps, {args.layers} layers of {args.hidden}, state {args.state}, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds"
    )
    for cell in args.cells:
        model = build(cell, args)
        print(f"\n{cell}: {model.num_parameters():,} parameters; ours runs {model.training_path(x.device)}")
        print(f"  ours vs plain parallel, largest logit difference: {check_agreement(model, x):.2e}")
        candidates = ways(model)
        for logits in candidates.values():  # warm-up: allocations, the engine's first load
            training_step(model, logits, x, y)
        times = {name: [] for name in candidates}
        names = list(candidates)
        for turn in range(args.rounds):  # each round starts one way later: none always follows the step loop,
            for name in names[turn % 3 :] + names[: turn % 3]:  # whose freed gigabytes slow the next step down
                times[name].append(training_step(model, candidates[name], x, y))
        ours = statistics.median(times["ours"])
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"  {name:<15} {median * 1000:8.0f} ms a step   {median / ours:5.2f}x ours' time   "
                f"{median * BATCHES_PER_EPOCH:6.0f} s a pixel epoch"
            )
        if args.profile:
            profile(model, x, y)


if __name__ == "__main__":
    main()
