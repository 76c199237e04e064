"""Does training several models as one stacked computation pay on this machine?

Models that share data and recipe (the rows sweep, or several seeds) see the
same batches, so their multiplies can run as one batched multiply over a model
dimension: (M, 100, 200) x (M, 200, 210) instead of M separate (100, 200) x
(200, 210). This script implements the engine's forward and backward pass with
that extra dimension (the tricks of src/seqmnist/engine.py as they were when
this was measured: the state u = sigmoid(2a) with a constant input row; the
engine now keeps r = u - 1/2 so blank rows stay exactly zero, the same work),
checks that it
gives each model exactly the gradients the single-model engine gives, and times
M models stacked against M models one after the other, interleaved. Usage:

    python bench/stacked.py [--models 1 4 8 14] [--seconds 4]
"""

import argparse
import statistics
import time

import torch

from seqmnist.cells import VanillaRNN


def stacked_loss_and_grads(x, y, U, W, V):
    """Sum over models of the seed loss, and its gradients; U (M, 28, H), W (M, H, H), V (M, H, C)."""
    models, hidden, classes = V.shape
    batch, rows, inputs = x.shape
    xs = torch.cat([x.transpose(0, 1), x.new_ones(rows, batch, 1)], dim=2).reshape(rows * batch, inputs + 1)
    # Input projections with the sigmoid trick's constant row.
    IW = torch.cat(
        [
            torch.cat([2 * U, torch.zeros(models, inputs, classes)], 2),
            torch.cat([-2 * W.sum(1, keepdim=True), -V.sum(1, keepdim=True)], 2),
        ],
        1,
    )
    F = torch.empty(rows + 1, models, batch, hidden + classes)
    F[:rows] = torch.matmul(xs, IW).view(models, rows, batch, -1).transpose(0, 1)
    F[rows] = IW[:, inputs][:, None, :]
    M = torch.cat([4 * W, 2 * V], dim=2)
    u = torch.empty(rows + 1, models, batch, hidden)
    u[0] = 0.5
    for k in range(rows):
        F[k].baddbmm_(u[k], M)
        torch.sigmoid(F[k, :, :, :hidden], out=u[k + 1])
    F[rows, :, :, hidden:].baddbmm_(u[rows], M[:, :, hidden:])
    P = torch.softmax(F[1:, :, :, hidden:], dim=-1)  # (rows, M, B, C)
    py = P.mean(0).gather(2, y.expand(models, batch)[..., None]).squeeze(2)  # (M, B)
    loss = -torch.log(py).mean(1).sum()

    S = 2 * u - 1
    D = 1 - S * S
    G = torch.empty_like(F)
    g = (-1.0 / (batch * rows)) / py
    index = y[None, None, :, None].expand(rows, models, batch, 1)
    Py = P.gather(3, index)
    dZ = -P * Py
    dZ.scatter_add_(3, index, Py)
    G[1:, :, :, hidden:] = dZ * g[None, :, :, None]
    G[0, :, :, hidden:] = 0
    G[rows, :, :, :hidden] = 0
    WV_T = torch.cat([W, V], dim=2).transpose(1, 2)
    tmp = torch.empty(models, batch, hidden)
    for k in range(rows - 1, -1, -1):
        torch.bmm(G[k + 1], WV_T, out=tmp)
        torch.mul(tmp, D[k + 1], out=G[k, :, :, :hidden])
    # Per-model weight gradients: contract over rows and batch.
    Sm = S.transpose(0, 1).reshape(models, -1, hidden)
    Gm = G.transpose(0, 1).reshape(models, -1, hidden + classes)
    dWV = torch.bmm(Sm.transpose(1, 2), Gm)
    dU = torch.bmm(
        x.transpose(0, 1).reshape(1, rows * batch, inputs).expand(models, -1, -1).transpose(1, 2),
        Gm[:, : rows * batch, :hidden],
    )
    return loss, dU, dWV[:, :, :hidden], dWV[:, :, hidden:]


def compare(m: int, x: torch.Tensor, y: torch.Tensor, seconds: float) -> tuple[float, float, float]:
    """(separate images/s, stacked images/s, worst relative gradient difference) for m models."""
    singles = [VanillaRNN(200).reset_parameters(i) for i in range(m)]
    U, W, V = (torch.stack([getattr(s, n).detach() for s in singles]) for n in "UWV")

    def separate() -> None:
        for s in singles:
            torch.autograd.grad(s.loss(x, y), [s.U, s.W, s.V])

    def stacked() -> None:
        stacked_loss_and_grads(x, y, U, W, V)

    _, dU, dW, dV = stacked_loss_and_grads(x, y, U, W, V)
    worst = 0.0
    for i, s in enumerate(singles):
        ref = torch.autograd.grad(s.loss(x, y), [s.U, s.W, s.V])
        for got, want in zip((dU[i], dW[i], dV[i]), ref, strict=True):
            worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    rates = {"separate": [], "stacked": []}
    for _ in range(4):
        for name, fn in (("separate", separate), ("stacked", stacked)):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 8:
                fn()
                count += 1
            rates[name].append(count * len(x) * m / (time.perf_counter() - start))
    return statistics.median(rates["separate"]), statistics.median(rates["stacked"]), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4, 8, 14])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 28, 28, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)
    print(f"{'models':>6} {'separate img/s':>15} {'stacked img/s':>14} {'speedup':>8} {'max grad diff':>14}")
    for m in args.models:
        separate, stacked, worst = compare(m, x, y, args.seconds)
        print(f"{m:>6} {separate:>15.0f} {stacked:>14.0f} {stacked / separate:>7.2f}x {worst:>14.1e}")


if __name__ == "__main__":
    main()
