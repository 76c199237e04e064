"""The fast path of the elementwise cells on the CPU: hand-written backpropagation through time.

Same math as :class:`seqmnist.model.ElementwiseRNN`'s definition with its readouts (tests hold the
two to 1e-5 for every cell, readout, bias, depth and task), laid out for the multiply library: one
multiply per step and direction, each yielding everything that step needs; the weight gradients are
sums over all steps and the whole batch. ``engine.cpp`` runs the loops, one call per layer; this file
holds the buffers and the autograd glue. Built into the same library, ``scan.cpp`` runs the LRU's
complex diagonal recurrence (:func:`complex_scan`) and the IndRNN's (:func:`relu_scan`), whose dense
work stays with PyTorch, and ``gate.cpp`` the passes between the linear cells' multiplies (:func:`skip`,
:func:`gate`).

Its layout, and why (docs/speed.md has what each was measured to buy, and on which machine):

* The readout and the input are fused into the recurrent multiply: step k multiplies
  ``[r_k | x_k | 1]`` by ``[[4W | 2V], [2U | 0], [2b | c]]``, which yields the next pre-activation and
  this step's logits at once; the backward pass gets the readout's and the inputs' weight gradients as
  extra columns of multiplies it makes anyway. Small separate multiplies run far below peak.
* tanh through sigmoid, tanh(a) = 2 sigmoid(2a) - 1, since PyTorch's CPU sigmoid is vectorised and its
  tanh is not: the state kept is r = s / 2 = sigmoid(2a) - 1/2, the factors folded into the weights.
  Centring keeps blank rows exactly zero, so an image whose rows read are blank gets exactly uniform
  softmaxes and ties break the seed's way (to digit 0). A relu cell keeps s itself.
* Rows of the buffers and weights padded to a multiple of 16 floats (64-byte aligned), the padding zero.
* The steps before an image's first inked row are skipped (engine.cpp's ActiveRows): without a bias
  its state is exactly zero until then. The same bits, less work.
* Plain SGD skips autograd and the optimiser (:func:`layers_gradients`, taken by
  :class:`seqmnist.recipes.EngineSGD`), updating as ``torch.optim.SGD`` does: the same bits.
* Compact (T + 1, batch, classes) logits, preallocated per-thread buffers (:class:`Workspaces`) reused
  batch after batch, and upper layers reading the lower layer's states in place.

The loss's exp stays scalar: vectorising it would change the bits the seed's replay rests on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

from .files import user_cache, write_text
from .readouts import engine_readout_codes

# One library: the elementwise cells' loops, the diagonal recurrences (the LRU's, the IndRNN's) and the
# linear cells' gate.
SOURCES = tuple(Path(__file__).with_name(name) for name in ("engine.cpp", "scan.cpp", "gate.cpp"))


@functools.cache
def native_loops():
    """The compiled loops of engine.cpp: built on first use (about a minute), then loaded from disk.

    None with SEQMNIST_NATIVE=0, or where they cannot be built (no C++ compiler), with one line
    on stderr: the models then use PyTorch's own modules, more slowly.
    """
    if os.environ.get("SEQMNIST_NATIVE", "1") == "0":
        return None
    try:
        return _load_or_build()
    except Exception as exc:  # no compiler, no ninja, no writable cache: PyTorch's modules still work
        print(f"seqmnist: warning: {exc}; using PyTorch's own modules (slower)", file=sys.stderr)
        return None


# AVX2 where PyTorch's own kernels use it (or better), and AVX-512 for gate.cpp's passes where they
# use that: never an instruction this CPU lacks, even when the cache is shared with other machines (the
# flags name the build). -fopenmp: at::parallel_for, inlined from PyTorch's headers, is an OpenMP
# parallel region, run on PyTorch's threads (see _link_flags).
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
_CFLAGS = [
    "-O3",
    "-fopenmp",
    *(["-mavx2", "-mfma"] if _CAPABILITY in ("AVX2", "AVX512") else []),
    *(["-DSEQMNIST_AVX512"] if _CAPABILITY == "AVX512" else []),
]
# The OpenMP runtimes' files: GNU's (libgomp, also as a wheel's libgomp-<hash>), Intel's, LLVM's.
_OPENMP_FILE = re.compile(r"lib(?:gomp|iomp5|omp)(?:-[0-9a-f]+)?\.so(?:\.\d+)*")


def openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process, as real paths (empty where /proc is not).

    Two in one process mean two thread pools that know nothing of each other: the engine's parallel
    regions would ignore ``torch.set_num_threads`` and oversubscribe the cores, or worse.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    paths = {fields[5] for fields in (line.split(maxsplit=5) for line in maps.splitlines()) if len(fields) == 6}
    return {os.path.realpath(path) for path in paths if _OPENMP_FILE.fullmatch(os.path.basename(path))}


def _link_flags() -> list[str]:
    """Link the OpenMP runtime PyTorch loaded (its wheel ships one) rather than the compiler's, with
    its directory as the search path: ``ldd`` then shows the runtime the process will really use, and
    the linker checks that every OpenMP symbol the engine calls is in PyTorch's runtime. Without
    exactly one runtime found (no /proc), the compiler's own, as -fopenmp links it."""
    runtimes = openmp_runtimes()
    if len(runtimes) != 1:
        return ["-fopenmp"]
    (runtime,) = runtimes
    return [runtime, f"-Wl,-rpath,{Path(runtime).parent}"]


def _load_or_build():
    """The engine, loaded only if it brings no OpenMP runtime beside PyTorch's (openmp_runtimes) and
    knows the readouts by the codes seqmnist.readouts gives them."""
    before = openmp_runtimes()
    module = _load_or_build_unchecked()
    added = openmp_runtimes() - before
    if added:
        raise RuntimeError(f"the CPU engine loaded a second OpenMP runtime ({', '.join(sorted(added))})")
    exported, ours = dict(module.readout_codes), engine_readout_codes()
    if exported != ours:
        raise RuntimeError(f"the CPU engine's readout codes {exported} are not seqmnist.readouts' {ours}")
    return module


def covers(activation: str | None) -> bool:
    """Whether the compiled engine is here and runs this activation (engine.cpp's ``activations``)."""
    native = native_loops()
    return native is not None and activation in native.activations


def _factors(activation: str) -> tuple[int, float, float]:
    """engine.cpp's code of an activation, its sigma (s = sigma r) and kappa (phi' = kappa slope(r))."""
    return native_loops().activations[activation]


def built_library(ldflags: list[str] | None = None) -> Path:
    """Where the compiled engine is, or will be once built: one directory per source text, flags
    (which name PyTorch's directory), machine, Python and PyTorch, so that builds never clash."""
    ldflags = _link_flags() if ldflags is None else ldflags
    flags = " ".join([*_CFLAGS, *ldflags, platform.machine()])
    what = b"".join(source.read_bytes() for source in SOURCES) + flags.encode()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    build = user_cache("engine") / f"{tag.replace('+', '-')}-{hashlib.sha256(what).hexdigest()[:12]}"
    return build / "seqmnist_engine.so"


def _load_or_build_unchecked():
    """Import the built module; else build it in a private directory and move it into place, so that
    a build killed at any instant, or two processes building at once, leave no half-written file."""
    ldflags = _link_flags()
    built = built_library(ldflags)
    build, failed = built.parent, built.parent / "failed.txt"
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
            sources=[str(source) for source in SOURCES],
            extra_cflags=_CFLAGS,
            extra_ldflags=ldflags,
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


LayerWeights = tuple  # (U, W or w, b or None) of one layer


class Workspace:
    """Buffers for one batch shape and model, reused across batches so the hot loop allocates nothing.

    A forward pass overwrites the buffers the previous one left for its backward pass; a generation
    counter turns such misuse into an error.
    """

    def __init__(self, skip_blank: bool = True) -> None:
        self.key: tuple | None = None
        self.generation = 0
        # Leave out the steps before an image's first inked row (engine.cpp's ActiveRows): same bits, less work.
        self.skip_blank = skip_blank
        self.inked_from: torch.Tensor | None = None

    def ensure(self, x: torch.Tensor, layers: list[LayerWeights], classes: int) -> None:
        shapes = tuple((U.shape[0], U.shape[1], b is not None) for U, _, b in layers)
        key = (x.shape[1], x.shape[0], shapes, classes, x.device)
        if key != self.key:
            self.key = key
            steps, batch = x.shape[1], x.shape[0]
            opts = {"device": x.device, "dtype": x.dtype}
            self.hidden = [hidden for _, hidden, _ in shapes]
            self.states, self.step_weights, self.back_weights = [], [], []
            for depth, (inputs, hidden, bias) in enumerate(shapes):
                top = depth == len(shapes) - 1
                reads = hidden + inputs + bias  # what one step multiplies: [r_k | x_k | 1]
                width = _padded(hidden + (classes if top else 0))
                # state[k] = [r_k | x_k | 1 | 0]: r_k = s_k / sigma beside the input step k reads with it.
                # Zero for good where never written: r_0 = 0, x_T = 0 (the last step only reads out) and
                # the padding; the bias column's ones stay ones.
                state = torch.zeros(steps + 1, batch, _padded(reads), **opts)
                if bias:
                    state[:, :, hidden + inputs] = 1
                self.states.append(state)
                # [[rho sigma W | sigma V | 0], [rho U | 0 | 0], [rho b | c | 0]], filled by engine.cpp.
                self.step_weights.append(torch.zeros(reads, width, **opts))
                # kappa [W | V]^T, contiguous rather than a transposed view (MKL runs the step multiply
                # ~10% faster so), zero columns up to a multiple of 16; a layer above the first has
                # kappa U^T in further columns: the gradient it hands the layer below.
                self.back_weights.append(torch.zeros(width, _padded(hidden) + (inputs if depth else 0), **opts))
            # z[k]: the top layer's logits of step k, compact (the loss pass reads them in cache).
            self.z = torch.empty(steps + 1, batch, classes, **opts)
            self.grad = None
        self.generation += 1

    def ensure_backward(self) -> None:
        """The backward pass's buffers, allocated on first use so evaluation never pays for them."""
        if self.grad is None:
            # grad[k] = dL/dz_k, laid out like z; grad[0] (z_0 counts for no readout) is never
            # written, so zero for good.
            self.grad = torch.zeros_like(self.z)
            # above[l][k]: kappa times the gradient in layer l's states s_k, from the layer above.
            self.above = [
                torch.zeros(*state.shape[:2], hidden, dtype=state.dtype, device=state.device)
                for state, hidden in zip(self.states[:-1], self.hidden, strict=False)
            ] + [None]

    def inputs(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """What layer ``depth`` reads, (batch, steps, inputs): x, or the states r_1..r_T of the layer below."""
        if depth == 0:
            return x.contiguous()
        return self.states[depth - 1][1:, :, : self.hidden[depth - 1]].transpose(0, 1)

    def logits(self) -> torch.Tensor:
        """The top layer's logits of steps 1..T, (steps, batch, classes), a view of ``z``."""
        return self.z[1:]


class Workspaces:
    """A model's workspaces, one per thread: two threads reading one model never share buffers, while
    each thread reuses its own batch after batch. A copy of the model (deepcopy, pickle) starts with none."""

    def __init__(self, skip_blank: bool = True) -> None:
        self.skip_blank = skip_blank
        self._local = threading.local()

    def get(self) -> Workspace:
        """The calling thread's workspace."""
        try:
            return self._local.workspace
        except AttributeError:
            self._local.workspace = Workspace(self.skip_blank)
            return self._local.workspace

    def __reduce__(self) -> tuple:
        return Workspaces, (self.skip_blank,)


def _forward(
    ws: Workspace,
    x: torch.Tensor,
    layers: list[LayerWeights],
    V,
    c,
    activation: str,
    y: torch.Tensor | None = None,
    readout: str = "mean-softmax",
) -> torch.Tensor | None:
    """All layers, bottom first; with labels y (training), also each image's loss, returned, and the
    gradient of each loss in every logit, left in ``ws.grad``."""
    ws.ensure(x, layers, V.shape[1])
    if y is not None:
        ws.ensure_backward()
    native = native_loops()
    unbiased = c is None and all(b is None for _, _, b in layers)
    ws.inked_from = native.first_inked_steps(ws.inputs(x, 0)) if ws.skip_blank and unbiased else None
    losses = None
    for depth in range(len(layers)):
        losses = native.forward_layer(*_forward_arguments(ws, x, layers, V, c, activation, y, readout, depth))
    return losses


def _forward_arguments(
    ws: Workspace,
    x: torch.Tensor,
    layers: list[LayerWeights],
    V: torch.Tensor,
    c: torch.Tensor | None,
    activation: str,
    y: torch.Tensor | None,
    readout: str,
    depth: int,
) -> tuple:
    """engine.cpp's forward_layer's arguments for layer ``depth`` (a function of its own so that tests
    can call it with each argument wrong in turn)."""
    top = depth == len(layers) - 1
    U, W, b = layers[depth]
    weights = [t.contiguous() if t is not None else None for t in (U, W, b, V if top else None, c if top else None)]
    code, sigma, _ = _factors(activation)
    return (
        ws.z if top else None,
        ws.states[depth],
        ws.inputs(x, depth),
        *weights,
        ws.step_weights[depth],
        code,
        sigma if depth else 1.0,
        y.contiguous() if top and y is not None else None,
        ws.grad if top and y is not None else None,
        native_loops().readout_codes[readout],
        ws.inked_from,
    )


class _LayersLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws: Workspace, x, y, structure: tuple, *weights):
        activation, readout, layers, bias = structure
        stack, V, c = _unflatten(weights, layers, bias)
        losses = _forward(ws, x, stack, V, c, activation, y, readout)
        ctx.save_for_backward(*weights)
        ctx.ws, ctx.generation, ctx.structure = ws, ws.generation, structure
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        ws = ctx.ws
        if ctx.generation != ws.generation:
            raise RuntimeError("engine workspace reused by another forward pass before backward")
        activation, _, layers, bias = ctx.structure
        stack, V, c = _unflatten(ctx.saved_tensors, layers, bias)
        grads = _backward(ws, stack, V, c, activation, dloss.item() / ws.z.shape[1])
        return None, None, None, None, *grads


def _backward(ws: Workspace, layers: list[LayerWeights], V, c, activation: str, scale: float) -> list[torch.Tensor]:
    """The gradients of ``scale`` times the summed loss of the last forward pass (with labels), top
    layer first, returned in the order of :func:`_flat`."""
    native = native_loops()
    grads: list[torch.Tensor] = []
    for depth in range(len(layers) - 1, -1, -1):
        layer = native.backward_layer(*_backward_arguments(ws, layers, V, c, activation, scale, depth))
        if depth == len(layers) - 1:  # [dU, dW, db?, dV, dc?]: the readout's last
            biased = layers[depth][2] is not None
            readout = layer[2 + biased :]
            layer = layer[: 2 + biased]
        grads = layer + grads
    return grads + readout


def _backward_arguments(
    ws: Workspace, layers: list[LayerWeights], V, c, activation: str, scale: float, depth: int
) -> tuple:
    """engine.cpp's backward_layer's arguments for layer ``depth`` (see :func:`_forward_arguments`)."""
    top = depth == len(layers) - 1
    U, W, b = (t.contiguous() if t is not None else None for t in layers[depth])
    code, sigma, kappa = _factors(activation)
    return (
        ws.grad if top else None,
        ws.above[depth],
        ws.states[depth],
        U,
        W,
        b,
        V.contiguous() if top else None,
        c.contiguous() if top and c is not None else None,
        ws.back_weights[depth],
        _padded(ws.hidden[depth]),
        code,
        sigma if depth else 1.0,
        scale,
        ws.above[depth - 1] if depth else None,
        kappa,
        ws.inked_from,
    )


def _flat(layers: list[LayerWeights], V: torch.Tensor, c: torch.Tensor | None) -> list[torch.Tensor]:
    """Every weight, in the order the autograd function takes them: each layer's U, W, b, then V, c."""
    return [t for layer in layers for t in layer if t is not None] + [V] + ([c] if c is not None else [])


def _unflatten(weights, layers: int, bias: bool):
    per = 2 + bias
    stack = [(weights[i * per], weights[i * per + 1], weights[i * per + 2] if bias else None) for i in range(layers)]
    return stack, weights[layers * per], weights[layers * per + 1] if bias else None


def layers_loss(
    ws: Workspace,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: list[LayerWeights],
    V: torch.Tensor,
    c: torch.Tensor | None,
    activation: str,
    readout: str,
) -> torch.Tensor:
    """The readout's loss on a batch, averaged, differentiable in every weight through the fast backward pass."""
    structure = (activation, readout, len(layers), c is not None)
    return _LayersLoss.apply(ws, x, y, structure, *_flat(layers, V, c))


def layers_gradients(
    ws: Workspace,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: list[LayerWeights],
    V: torch.Tensor,
    c: torch.Tensor | None,
    activation: str,
    readout: str,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The batch's mean loss and the gradient of every weight (in the order of :func:`_flat`), by the
    two compiled passes alone: no autograd, whose machinery around them costs 0.5-1.2 ms a batch, most
    of a small model's batch (:class:`seqmnist.recipes.EngineSGD` steps with them)."""
    with torch.no_grad():
        losses = _forward(ws, x, layers, V, c, activation, y, readout)
        return losses.mean(), _backward(ws, layers, V, c, activation, 1.0 / len(losses))


class _LayersLogits(torch.autograd.Function):
    """The logits by the compiled forward pass; their gradient, where asked for, by the compiled
    backward pass, fed the logits' gradient in place of the one a loss would have left in ``ws.grad``
    (none reaches x: the engine computes no input gradient of the bottom layer)."""

    @staticmethod
    def forward(ctx, ws: Workspace, x, structure: tuple, *weights):
        activation, layers, bias = structure
        stack, V, c = _unflatten(weights, layers, bias)
        _forward(ws, x, stack, V, c, activation)
        ctx.save_for_backward(*weights)
        ctx.ws, ctx.generation, ctx.structure = ws, ws.generation, structure
        return ws.logits().clone()

    @staticmethod
    def backward(ctx, dz):
        ws = ctx.ws
        if ctx.generation != ws.generation:
            raise RuntimeError("engine workspace reused by another forward pass before backward")
        activation, layers, bias = ctx.structure
        stack, V, c = _unflatten(ctx.saved_tensors, layers, bias)
        ws.ensure_backward()
        ws.grad[1:].copy_(dz)
        return None, None, None, *_backward(ws, stack, V, c, activation, 1.0)


def layers_logits(
    ws: Workspace, x: torch.Tensor, layers: list[LayerWeights], V: torch.Tensor, c: torch.Tensor | None, activation: str
) -> torch.Tensor:
    """Per-step logits (steps, batch, classes), a copy, differentiable in every weight. Without a
    gradient to track, the forward pass alone: autograd's Function costs ~10% of one image's read."""
    weights = _flat(layers, V, c)
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        return _LayersLogits.apply(ws, x, (activation, len(layers), c is not None), *weights)
    _forward(ws, x, layers, V, c, activation)
    return ws.logits().clone()


class _ReluScan(torch.autograd.Function):
    """h_t = max(0, a_t + b + w * h_{t-1}) over (batch, steps, hidden) by scan.cpp, backward included; only
    h is kept for the backward pass (its sign is relu's mask)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = native_loops().relu_scan_forward(a.contiguous(), w.contiguous(), b.contiguous())
        ctx.save_for_backward(h, w, b)
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w, b = ctx.saved_tensors
        da, dw, db = native_loops().relu_scan_backward(g.contiguous(), h, w.contiguous(), b.contiguous())
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
        h = native_loops().scan_forward(x.contiguous(), lam.contiguous())
        ctx.save_for_backward(h, lam)
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, lam = ctx.saved_tensors
        return tuple(native_loops().scan_backward(g.contiguous(), h, lam.contiguous()))


def complex_scan(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """h_t = lambda h_{t-1} + x_t, h_{-1} = 0, with x (batch, steps, 2N) holding [re | im] halves and
    lam (2, N) lambda's real and imaginary parts: 784 steps of a few multiplies, which PyTorch would
    run as 784 calls of a few microseconds each. Differentiable in both."""
    return _ComplexScan.apply(x, lam)


def covers_scan(x: torch.Tensor) -> bool:
    """Whether :func:`complex_scan` and :func:`gate` run for x: the engine is here and x on the CPU."""
    return x.device.type == "cpu" and native_loops() is not None


# --- gate.cpp: the ends of the linear cells' blocks (seqmnist.cells.linear) -------------------------------


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


class _Skip(torch.autograd.Function):
    """out = GELU(m + D v) over rows by gate.cpp, backward included (y = m + D v recomputed, not kept)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, v: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m, v, D)
        return native_loops().skip_forward(m, v, D)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(native_loops().skip_backward(g.contiguous(), *ctx.saved_tensors))


def skip(m: torch.Tensor, v: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """GELU(m + D v), (..., H) from m and v (..., H) and D (H), in one pass over memory each way.
    Differentiable in all three."""
    return _Skip.apply(_rows(m), _rows(v), D.contiguous()).view(m.shape)


class _Gate(torch.autograd.Function):
    """out = u + (z_a + b_a) sigmoid(z_g + b_g) over rows by gate.cpp, backward included."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, b)
        return native_loops().gate_forward(u, z, b)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, b = ctx.saved_tensors
        dz, db = native_loops().gate_backward(g.contiguous(), z, b)
        return g, dz, db


def gate(u: torch.Tensor, z: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """u + GLU(z + b), the GLU over z's last dimension: (..., H) from u (..., H), z (..., 2H) and b (2H)
    (None: zero), in one pass over memory each way. Differentiable in all three."""
    b = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device) if b is None else b
    return _Gate.apply(_rows(u), _rows(z), b.contiguous()).view(u.shape)
