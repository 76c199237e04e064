"""The compiled kernels besides the elementwise engine, as autograd functions on CPU tensors: scan.cpp's
diagonal recurrences (the IndRNN's relu one, :func:`relu_scan`; the LRU's complex one,
:func:`complex_scan`), whose dense work stays with PyTorch, and gate.cpp's passes between the linear
cells' multiplies (:func:`skip`, :func:`gate`). Each is held to plain PyTorch by the tests."""

from __future__ import annotations

import torch

from . import native

# --- scan.cpp: the IndRNN's recurrence (seqmnist.cells.elementwise) ------------------------------------


class _ReluScan(torch.autograd.Function):
    """h_t = max(0, a_t + b + w * h_{t-1}) over (batch, steps, hidden) by scan.cpp, backward included; only
    h is kept for the backward pass (its sign is relu's mask)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = native.native_loops().relu_scan_forward(a.contiguous(), w.contiguous(), b.contiguous())
        ctx.save_for_backward(h, w, b)
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w, b = ctx.saved_tensors
        da, dw, db = native.native_loops().relu_scan_backward(g.contiguous(), h, w.contiguous(), b.contiguous())
        return da, dw, db


def relu_scan(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The IndRNN's states h (batch, steps, hidden) of a (batch, steps, hidden), a recurrent vector w and
    a bias b (None: zero): h_t = max(0, a_t + b + w * h_{t-1}), h_{-1} = 0; differentiable in a, w and
    b. Where :func:`native_loops` is (CPU tensors)."""
    return _ReluScan.apply(a, w, torch.zeros_like(w) if b is None else b)


# --- scan.cpp: the complex diagonal linear recurrence of the LRU (seqmnist.cells.linear) -----------


class _ComplexScan(torch.autograd.Function):
    """h_t = lambda h_{t-1} + x_t over (batch, steps, [re | im]) by scan.cpp, backward included."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        h = native.native_loops().scan_forward(x.contiguous(), lam.contiguous())
        ctx.save_for_backward(h, lam)
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, lam = ctx.saved_tensors
        return tuple(native.native_loops().scan_backward(g.contiguous(), h, lam.contiguous()))


def complex_scan(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """h_t = lambda h_{t-1} + x_t, h_{-1} = 0, with x (batch, steps, 2N) holding [re | im] halves and
    lam (2, N) lambda's real and imaginary parts: 784 steps of a few multiplies, which PyTorch would
    run as 784 calls of a few microseconds each. Differentiable in both."""
    return _ComplexScan.apply(x, lam)


def available(device: torch.device) -> bool:
    """Whether these kernels run for tensors on ``device``: the library is here, and the device a CPU.
    The linear cells and the IndRNN's layer-parallel path choose, and name, their path by this alone."""
    return device.type == "cpu" and native.native_loops() is not None


# --- gate.cpp: the ends of the linear cells' blocks (seqmnist.cells.linear) -------------------------------


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


class _Skip(torch.autograd.Function):
    """out = GELU(m + D v) over rows by gate.cpp, backward included (y = m + D v recomputed, not kept)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, v: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m, v, D)
        return native.native_loops().skip_forward(m, v, D)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(native.native_loops().skip_backward(g.contiguous(), *ctx.saved_tensors))


def skip(m: torch.Tensor, v: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """GELU(m + D v), (..., H) from m and v (..., H) and D (H), in one pass over memory each way.
    Differentiable in all three."""
    return _Skip.apply(_rows(m), _rows(v), D.contiguous()).view(m.shape)


class _Gate(torch.autograd.Function):
    """out = u + (z_a + b_a) sigmoid(z_g + b_g) over rows by gate.cpp, backward included."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, b)
        return native.native_loops().gate_forward(u, z, b)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, b = ctx.saved_tensors
        dz, db = native.native_loops().gate_backward(g.contiguous(), z, b)
        return g, dz, db


def gate(u: torch.Tensor, z: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """u + GLU(z + b), the GLU over z's last dimension: (..., H) from u (..., H), z (..., 2H) and b (2H)
    (None: zero), in one pass over memory each way. Differentiable in all three."""
    b = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device) if b is None else b
    return _Gate.apply(_rows(u), _rows(z), b.contiguous()).view(u.shape)
