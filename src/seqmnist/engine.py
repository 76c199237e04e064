"""The fast path: hand-written backpropagation through time for the vanilla RNN.

Same math as :class:`seqmnist.model.VanillaRNN` with
:func:`seqmnist.model.averaged_softmax_nll` (tests hold the two to 1e-5), laid
out for the multiply library: one multiply per step and direction, each
yielding everything that step needs; the weight gradients are sums over all
rows and the whole batch.

Tricks, each measured on the 2-core CPU at batch 100, hidden 200:

* Readout fused into the recurrent multiply. Step k multiplies the state by
  ``[W | V]`` (200 x 210), which yields the next pre-activation *and* this
  row's logits: a separate (2800 x 200)(200 x 10) readout multiply, which runs
  far below peak (~0.8 ms), disappears for ~5% more work in a multiply that runs
  near peak. In the backward pass the same fusion turns the readout gradient
  and its weight gradient into extra columns of multiplies that happen anyway
  (~1.4 ms saved). The input row joins the same way: step k multiplies
  ``[r_k | x_k]`` by ``[[4W | 2V], [2U | 0]]`` (228 x 210, padded to 224), and the weight
  gradient's multiply yields dU in its last 28 rows (engine.cpp's header says
  what that bought).
* tanh through sigmoid. PyTorch's CPU tanh is not vectorised well (~50 us for
  one 100 x 200 step, ~1.4 ms a batch); sigmoid is (~25 us). With
  tanh(a) = 2 sigmoid(2a) - 1 the loop keeps r = s / 2 = sigmoid(2a) - 1/2 as
  its state and folds the factors into the weights: 2a_{t+1} = x (2U) + r_t (4W)
  and s_t V = r_t (2V). One multiply, one sigmoid and one subtraction per step.
  Centring the state (rather than keeping sigmoid(2a) and a constant row) keeps
  blank rows exactly zero: an image whose rows read are all blank gets exactly
  uniform softmaxes, as in the seed, so ties break the seed's way (to digit 0).
  The backward pass works from r too: tanh' = 1 - s^2 = 4 (1/4 - r^2) is one
  pass over the states (the 4 goes into the weights), and s^T G = 2 r^T G.
* Rows of the buffers and weights padded to a multiple of 16 floats (210 ->
  224 columns, 228 -> 240 for the states), the padding of the states, the
  weights and grad held at zero: when the input projection was a separate
  multiply, MKL wrote an evaluation chunk's (28,000 x 28)(28 x 210) at ~20
  GFLOP/s with 840-byte rows, at ~50 with 64-byte-aligned ones. Evaluation got
  1.3-1.4x faster, a training batch 1.06-1.12x (the step multiplies gain too,
  despite 7% more columns).
* Preallocated buffers, in-place steps, per-row views made once: the Python
  loops allocate nothing and slice nothing (slicing in them cost ~0.6 ms).
* The two 28-step loops and the loss in C++ (``engine.cpp``, compiled on
  first use): fused elementwise passes, one slice of the batch per thread,
  BLAS called directly, weight gradients summed step by step, each step's
  product kept in cache; its header says what each bought. Together
  1.6-1.7x over the same engine on its Python loops, which remain for GPUs,
  float64 (gradcheck) and machines without a compiler.

What is left (see docs/speed.md): the step multiplies, (50 x 228)(228 x 224)
and two of like size per thread at batch 100, which MKL runs at ~75-90% of
one core's share of the large-multiply peak; Python (autograd, the
optimiser: ~0.5 ms a batch) and the threads' waits for each other. Larger
batches amortise both.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from .files import user_cache, write_text

NATIVE_SOURCE = Path(__file__).with_name("engine.cpp")


@functools.cache
def native_loops():
    """The compiled loops of engine.cpp: built on first use (about a minute), then loaded from disk.

    None with SEQMNIST_NATIVE=0, or where they cannot be built (no C++ compiler), with one line
    on stderr: the Python loops below do the same work, more slowly.
    """
    if os.environ.get("SEQMNIST_NATIVE", "1") == "0":
        return None
    try:
        return _load_or_build()
    except Exception as exc:  # no compiler, no ninja, no writable cache: the Python loops still work
        print(f"seqmnist: warning: {exc}; using the slower Python loops", file=sys.stderr)
        return None


# AVX2 where PyTorch's own kernels use it (or better): never an instruction this CPU lacks, even
# when the cache is shared with other machines. -fopenmp: at::parallel_for runs on PyTorch's threads.
_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
_CFLAGS = ["-O3", "-fopenmp", *(["-mavx2", "-mfma"] if _AVX2 else [])]


def _load_or_build():
    """Import the built module; else build it in a private directory and move it into place, so that
    a build killed at any instant, or two processes building at once, leave no half-written file."""
    # One directory per source text, flags, machine, Python and PyTorch: builds never clash.
    what = NATIVE_SOURCE.read_bytes() + " ".join([*_CFLAGS, platform.machine()]).encode()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    build = user_cache("engine") / f"{tag.replace('+', '-')}-{hashlib.sha256(what).hexdigest()[:12]}"
    built, failed = build / "seqmnist_engine.so", build / "failed.txt"
    if built.exists():  # the directory's name pins what it was built from: no need to ask ninja (~0.5 s)
        return _import_module(built)
    if failed.exists():
        raise _did_not_build(failed.read_text().strip(), build)
    build.mkdir(parents=True, exist_ok=True)
    print("seqmnist: compiling the CPU engine (once, about a minute)", file=sys.stderr, flush=True)
    from torch.utils import cpp_extension  # imports setuptools: only when building

    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=build))
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its compiler-version banner is noise here
    try:
        module = cpp_extension.load(
            name="seqmnist_engine",
            sources=[str(NATIVE_SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(scratch),
        )
        os.replace(scratch / built.name, built)
        return module
    except Exception as exc:
        reason = _build_error(str(exc))
        write_text(failed, reason + "\n")
        raise _did_not_build(reason, build) from exc
    finally:
        logger.setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)


def _did_not_build(reason: str, build: Path) -> RuntimeError:
    return RuntimeError(f"the CPU engine did not build ({reason}; delete {build} to retry)")


def _build_error(log: str) -> str:
    """The line of a failed build's log that says why: the first error, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("ninja:")]
    errors = [line for line in lines if "error:" in line.lower() or "not found" in line.lower()]
    return ((errors or lines or ["unknown reason"])[0 if errors else -1])[:160]


def _import_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _padded(columns: int) -> int:
    """Rounded up to a multiple of 16 floats (64 bytes): MKL writes such rows faster."""
    return -(-columns // 16) * 16


class Workspace:
    """Buffers for one batch shape, reused across batches so the hot loop allocates nothing.

    A forward pass overwrites the buffers the previous one left for its
    backward pass; a generation counter turns such misuse into an error.
    """

    def __init__(self, native: bool = True) -> None:
        self.key: tuple | None = None
        self.generation = 0
        self.use_native = native

    def loops(self):
        """The compiled loops where they apply (float32 on the CPU, unless turned off), else None."""
        fused = self.fused
        if self.use_native and fused.device.type == "cpu" and fused.dtype == torch.float32:
            return native_loops()
        return None

    def ensure(self, rows: int, batch: int, inputs: int, hidden: int, classes: int, like: torch.Tensor) -> None:
        key = (rows, batch, inputs, hidden, classes, like.device, like.dtype)
        if key != self.key:
            self.key = key
            opts = {"device": like.device, "dtype": like.dtype}
            self.width = _padded(hidden + classes)  # see the module docstring
            self.logits = slice(hidden, hidden + classes)
            self.reads = hidden + inputs  # what one step multiplies: [r_k | x_k]
            # fused[k] = [2 a_{k+1} | z_k | 0]: pre-activation of row k+1 (doubled), logits of row k, padding.
            # The compiled loops write only the logits here: they keep each step's product in cache.
            self.fused = torch.empty(rows + 1, batch, self.width, **opts)
            # state[k] = [r_k | x_k | 0]: r_k = sigmoid(2 a_k) - 1/2 = s_k / 2, the state of the sigmoid
            # trick, beside the input row that step k reads with it. Zero for good where never written:
            # r_0 = 0, x_T = 0 (the last step only reads out) and the padding.
            self.state = torch.zeros(rows + 1, batch, _padded(self.reads), **opts)
            # [[4W | 2V | 0], [2U | 0 | 0]]: one multiply per step gives 2 a_{k+1} and z_k.
            self.step_weights = torch.zeros(self.reads, self.width, **opts)
            # Per-row views made once: slicing inside the loop cost ~0.6 ms a batch in Python.
            self.fused_rows = list(self.fused)
            self.fused_pre = [f[:, :hidden] for f in self.fused]
            self.state_reads = [s[:, : self.reads] for s in self.state]
            self.state_rows = [s[:, :hidden] for s in self.state]
            self.grad = None
        self.generation += 1

    def ensure_backward(self) -> None:
        """The backward pass's buffers, allocated on first use so evaluation never pays for them."""
        if self.grad is None:
            hidden = self.logits.start
            # grad[k] = [dL/da_{k+1} | dL/dz_k | 0], laid out like fused. Never written, so zero for
            # good: the padding, grad[0]'s logits (z_0 does not exist) and grad[T]'s a_{T+1}. The
            # compiled loops use only the logits' gradients here, like fused's logits.
            self.grad = torch.zeros_like(self.fused)
            # 4 [W | V | 0]^T, contiguous rather than a transposed view (MKL runs the step multiply ~10%
            # faster so), with zero columns up to a multiple of 16 (engine.cpp). The 4 comes from the
            # derivative of tanh: 1 - s^2 = 4 (1/4 - r^2).
            opts = {"device": self.grad.device, "dtype": self.grad.dtype}
            self.step_weights_t = torch.zeros(self.width, _padded(hidden), **opts)
            if self.loops() is None:
                self.step_weights_t_rows = self.step_weights_t[:, :hidden]
                self.grad_rows = list(self.grad)
                self.grad_pre = [g[:, :hidden] for g in self.grad]
                self.deriv = torch.empty((*self.state.shape[:2], hidden), **opts)  # 1/4 - r_k^2
                self.deriv_rows = list(self.deriv)


def forward_states(ws: Workspace, x: torch.Tensor, U: torch.Tensor, W: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Run the recurrence over x (batch, rows, inputs); return per-row logits (rows, batch, classes).

    Leaves r_k = s_k / 2 for k = 0..T in ``ws.state``.
    """
    _forward(ws, x, U, W, V)
    return ws.fused[1:, :, ws.logits]


def _forward(ws: Workspace, x: torch.Tensor, U, W, V, y: torch.Tensor | None = None) -> torch.Tensor | None:
    """The recurrence; with labels y (training), also each image's loss, returned, and the gradient of
    each loss in every logit, left in ``ws.grad`` (the batch mean's 1 / B and the upstream gradient
    come later)."""
    batch, rows, inputs = x.shape
    hidden, classes = V.shape
    ws.ensure(rows, batch, inputs, hidden, classes, x)
    if y is not None:
        ws.ensure_backward()
    F, M, out = ws.fused, ws.step_weights, ws.logits
    native = ws.loops()
    if native:  # fills M itself
        labels, grad = (None, None) if y is None else (y.contiguous(), ws.grad)
        operands = (t.contiguous() for t in (x, U, W, V))
        return native.forward_recurrence(F, ws.state, *operands, M, labels, grad)
    torch.mul(W, 4, out=M[:hidden, :hidden])
    torch.mul(V, 2, out=M[:hidden, out])
    torch.mul(U, 2, out=M[hidden:, :hidden])
    ws.state[:rows, :, hidden : ws.reads].copy_(x.transpose(0, 1))
    for k in range(rows):
        torch.mm(ws.state_reads[k], M, out=ws.fused_rows[k])
        torch.sigmoid(ws.fused_pre[k], out=ws.state_rows[k + 1]).sub_(0.5)
    F[rows].zero_()
    F[rows, :, out].addmm_(ws.state_rows[rows], M[:hidden, out])
    return None if y is None else _losses_and_logit_grads(ws, y)


def _losses_and_logit_grads(ws: Workspace, y: torch.Tensor) -> torch.Tensor:
    """The loss part of :func:`_forward` for the Python loops (engine.cpp's image_losses does the same).

    The loss touches only mean_prob[b, y_b], so dloss_b/dz_t[b, c] = -P_t[b, y_b] ([c == y_b] - P_t[b, c])
    / (T mean_prob[b, y_b]).
    """
    out = ws.logits
    P = torch.softmax(ws.fused[1:, :, out], dim=-1)
    rows, batch, _ = P.shape
    py = P.mean(0).gather(1, y[:, None]).squeeze(1)
    index = y[None, :, None].expand(rows, batch, 1)
    Py = P.gather(2, index)
    dZ = ws.grad[1:, :, out]
    torch.mul(P, Py, out=dZ)
    dZ.neg_().scatter_add_(2, index, Py).mul_((-1 / rows / py)[None, :, None])
    return -torch.log(py)


class _SeedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws: Workspace, x: torch.Tensor, y: torch.Tensor, U, W, V):
        losses = _forward(ws, x, U, W, V, y)
        ctx.save_for_backward(U, W, V)
        ctx.ws, ctx.generation = ws, ws.generation
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        U, W, V = ctx.saved_tensors
        ws = ctx.ws
        if ctx.generation != ws.generation:
            raise RuntimeError("engine workspace reused by another forward pass before backward")
        G, WV4_T, out = ws.grad, ws.step_weights_t, ws.logits
        rows, batch, hidden = G.shape[0] - 1, G.shape[1], out.start
        # dL/da_{k+1} = ([dL/da_{k+2} | dL/dz_{k+1}] [W | V]^T) * 4 (1/4 - r_{k+1}^2), for k = T-1..0.
        # Weight gradients: [r_k | x_k]^T G[k], summed over all rows and the batch, gives s^T G / 2
        # (s = 2 r) in its first rows and x^T G[:, :hidden] in its last. Everything is linear in the
        # logits' gradients: the batch mean and dloss scale these only.
        native = ws.loops()
        if native:  # fills WV4_T itself
            weights = (t.contiguous() for t in (U, W, V))
            return None, None, None, *native.backward_recurrence(G, ws.state, *weights, WV4_T, dloss.item() / batch)
        torch.mul(W.T, 4, out=WV4_T[:hidden, :hidden])
        torch.mul(V.T, 4, out=WV4_T[out, :hidden])
        r = ws.state[..., :hidden]
        torch.addcmul(r.new_tensor(0.25), r[1:], r[1:], value=-1, out=ws.deriv[1:])  # deriv[0] is never used
        for k in range(rows - 1, -1, -1):
            torch.mm(ws.grad_rows[k + 1], ws.step_weights_t_rows, out=ws.grad_pre[k]).mul_(ws.deriv_rows[k + 1])
        sums = ws.state.view(-1, ws.state.shape[2])[:, : ws.reads].T @ G.view(-1, ws.width)
        scale = dloss / batch
        dWV = sums[:hidden, : out.stop] * (2 * scale)
        return None, None, None, sums[hidden:, :hidden] * scale, dWV[:, :hidden], dWV[:, out]


def seed_loss(
    ws: Workspace, x: torch.Tensor, y: torch.Tensor, U: torch.Tensor, W: torch.Tensor, V: torch.Tensor
) -> torch.Tensor:
    """The seed's loss on a batch, differentiable in U, W, V through the fast backward pass."""
    return _SeedLoss.apply(ws, x, y, U, W, V)


def probs_by_chunk(U: torch.Tensor, W: torch.Tensor, V: torch.Tensor, x: torch.Tensor, chunk: int = 1000):
    """Per-row softmaxes (rows, chunk, classes) for successive chunks of x, forward only: memory stays
    bounded by ``chunk`` whatever the size of x. Gradients are off while each chunk is computed, not
    while the caller holds the generator."""
    ws = Workspace()
    for i in range(0, len(x), chunk):
        with torch.no_grad():
            probs = torch.softmax(forward_states(ws, x[i : i + chunk], U, W, V), dim=-1)
        yield probs


def step_probs(U: torch.Tensor, W: torch.Tensor, V: torch.Tensor, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Softmax after every row for x (N, rows, inputs): (rows, N, classes)."""
    return torch.cat(list(probs_by_chunk(U, W, V, x, chunk)), dim=1)
