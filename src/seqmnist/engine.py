"""The fast path of the elementwise cells on the CPU: hand-written backpropagation through time.

Same math as :class:`seqmnist.cells.elementwise.ElementwiseRNN`'s definition with its readouts (tests hold the
two to 1e-5 for every cell, readout, bias, depth and task), laid out for the multiply library: one
multiply per step and direction, each yielding everything that step needs; the weight gradients are
sums over all steps and the whole batch. ``engine.cpp`` runs the loops, one call per layer; this file
holds the buffers and the autograd glue. The library is built and loaded by :mod:`seqmnist.native`;
its other kernels (scan.cpp, gate.cpp) are wrapped by :mod:`seqmnist.kernels`.

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

import threading

import torch

from . import native


def covers(activation: str | None) -> bool:
    """Whether the compiled engine is here and runs this activation (engine.cpp's ``activations``)."""
    library = native.native_loops()
    return library is not None and activation in library.activations


def _factors(activation: str) -> tuple[int, float, float]:
    """engine.cpp's code of an activation, its sigma (s = sigma r) and kappa (phi' = kappa slope(r))."""
    return native.native_loops().activations[activation]


def _padded(columns: int) -> int:
    """Rounded up to a multiple of 16 floats (64 bytes): MKL writes such rows faster."""
    return -(-columns // 16) * 16


LayerWeights = tuple  # (U, W or w, b or None) of one layer
Weights = tuple  # (every layer's LayerWeights, bottom first; V; c or None)


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
                # kappa [W | V]^T, contiguous rather than a transposed view (MKL's step multiply is faster
                # on it), zero columns up to a multiple of 16; a layer above the first has
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
    library = native.native_loops()
    unbiased = c is None and all(b is None for _, _, b in layers)
    ws.inked_from = library.first_inked_steps(ws.inputs(x, 0)) if ws.skip_blank and unbiased else None
    losses = None
    for depth in range(len(layers)):
        losses = library.forward_layer(*_forward_arguments(ws, x, layers, V, c, activation, y, readout, depth))
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
        native.native_loops().readout_codes[readout],
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
    library = native.native_loops()
    grads: list[torch.Tensor] = []
    for depth in range(len(layers) - 1, -1, -1):
        layer = library.backward_layer(*_backward_arguments(ws, layers, V, c, activation, scale, depth))
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
    ws: Workspace, x: torch.Tensor, y: torch.Tensor, weights: Weights, activation: str, readout: str
) -> torch.Tensor:
    """The readout's loss on a batch, averaged, differentiable in every weight through the fast backward pass."""
    layers, V, c = weights
    structure = (activation, readout, len(layers), c is not None)
    return _LayersLoss.apply(ws, x, y, structure, *_flat(layers, V, c))


def layers_gradients(
    ws: Workspace, x: torch.Tensor, y: torch.Tensor, weights: Weights, activation: str, readout: str
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The batch's mean loss and the gradient of every weight (in the order of :func:`_flat`), by the
    two compiled passes alone, without autograd's machinery around them (:class:`seqmnist.recipes.EngineSGD`
    steps with them)."""
    layers, V, c = weights
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


def layers_logits(ws: Workspace, x: torch.Tensor, weights: Weights, activation: str) -> torch.Tensor:
    """Per-step logits (steps, batch, classes), a copy, differentiable in every weight. Without a
    gradient to track, the forward pass alone, without autograd's Function around it."""
    layers, V, c = weights
    flat = _flat(layers, V, c)
    if torch.is_grad_enabled() and any(w.requires_grad for w in flat):
        return _LayersLogits.apply(ws, x, (activation, len(layers), c is not None), *flat)
    _forward(ws, x, layers, V, c, activation)
    return ws.logits().clone()
