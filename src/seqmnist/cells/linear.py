"""The linear recurrent cells: stacks of layers whose recurrence is linear in the state, so that training
runs in parallel over the steps, and reading step by step is one state update an input.

    lru   h_t = lambda h_{t-1} + gamma B u_t,  y_t = Re(C h_t) + D u_t,  lambda = exp(-e^nu + i e^theta)
          complex diagonal, gamma = sqrt(1 - |lambda|^2)                       (Orvieto et al. 2023)
    s4d   x_t = exp(dt A) x_{t-1} + (exp(dt A) - 1) / A u_t,  y_t = 2 Re(C x_t) + D u_t,
          A diagonal (S4D-Lin: -1/2 + i pi n), learnt log dt                   (Gu et al. 2022)

Every layer of either is one block, pre-norm and residual as in S4's example.py:
    u <- u + GLU(GELU(mix(LayerNorm(u))))      GLU(v) = (v W1 + b1) * sigmoid(v W2 + b2)
between an encoder (x_t -> u_t, a Linear) and a decoder to every step's logits z_t = u_t V + c; the
readouts are ``last`` (z_T, what the pixel-task papers use) and ``mean-logits`` (the mean of z_t, which
is S4's mean pooling followed by its decoder, the decoder being linear). ``mean-softmax`` would need
every step's softmax of a model trained to be read at the end, so neither takes it.

Each model computes the same function four ways, held equal by tests/test_linear_cells.py:
    logits(x)         the parallel form: LRU's recurrence by the compiled scan (scan.cpp, through
                      seqmnist.engine; a log-depth scan in PyTorch where the engine is missing or the
                      tensor is on a GPU), S4D's as a convolution with its kernel, by FFT; the blocks'
                      D u, GELU and GLU by gate.cpp where the scan's engine runs
    definition(x)     the equations with complex numbers, one state update per step: the reference
    advance(x_t, state)  one input in, one state update, one step's logits out, in real arithmetic
                      (no complex tensors: ONNX exports it): streaming, one pixel at a time
    plain_parallel(x) the parallel form as plain PyTorch code writes it (LRU: the log-depth scan;
                      S4D: s4d.py's forward as published): what ``seqmnist bench`` times ours against
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .. import kernels
from ..errors import SeqmnistError
from ..model import AUTOGRAD_PATH, Draws, ModelSpec, SequenceClassifier, sequence_dropout
from ..registry import register_cell

State = list[torch.Tensor]  # one (batch, width) tensor per layer: what advance() carries from input to input
Scan = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def log_depth_scan(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """:func:`seqmnist.kernels.complex_scan` in PyTorch operations: after the pass with shift d, each h_t
    holds the sum of its 2d latest terms, so ceil(log2 steps) passes over the whole sequence (Hillis &
    Steele 1986)."""
    n = lam.shape[1]
    power_re, power_im = lam[0], lam[1]  # lambda^d
    h, d = x, 1
    while d < x.shape[1]:
        earlier_re, earlier_im = h[:, :-d, :n], h[:, :-d, n:]
        carried = torch.cat(
            (power_re * earlier_re - power_im * earlier_im, power_re * earlier_im + power_im * earlier_re), dim=-1
        )
        h = torch.cat((h[:, :d], h[:, d:] + carried), dim=1)
        power_re, power_im = power_re * power_re - power_im * power_im, 2 * power_re * power_im
        d *= 2
    return h


# --- the layers' recurrences ----------------------------------------------------------------------------


class Mixer(nn.Module):
    """A layer's recurrence over H channels: :meth:`mixed` (the subclass's) plus the skip term D u_t."""

    D: nn.Parameter

    def parallel(self, u: torch.Tensor) -> torch.Tensor:
        """(batch, steps, H) to (batch, steps, H), all steps at once."""
        return self.mixed(u) + u * self.D


class LRULayer(Mixer):
    """The LRU's recurrence over H channels with N complex states; B and C are stored as real blocks
    B = [B_re; B_im] (2N, H) and C = [C_re | C_im] (H, 2N), the forms its real multiplies take."""

    # The ring lambda is drawn from, uniformly in area, and its largest phase: the paper's choices for
    # long sequences (sCIFAR, 1,024 steps), so that states remember hundreds of steps from the start.
    r_min, r_max, max_phase = 0.9, 0.999, 2 * math.pi
    recurrent = ("nu_log", "theta_log", "gamma_log")  # lambda and its normalisation

    def __init__(self, hidden: int, state: int):
        super().__init__()
        self.nu_log = nn.Parameter(torch.empty(state))
        self.theta_log = nn.Parameter(torch.empty(state))
        self.gamma_log = nn.Parameter(torch.empty(state))
        self.B = nn.Parameter(torch.empty(2 * state, hidden))
        self.C = nn.Parameter(torch.empty(hidden, 2 * state))
        self.D = nn.Parameter(torch.empty(hidden))

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        """Orvieto et al.'s initialisation (their minimal-LRU code): |lambda| uniform on the ring's area."""
        if name == "nu_log":
            radius_squared = draws.uniform(self.r_min**2, self.r_max**2, shape)
            return torch.log(-0.5 * torch.log(radius_squared))
        if name == "theta_log":
            return torch.log(self.max_phase * draws.uniform(0.0, 1.0, shape))
        if name == "gamma_log":  # sqrt(1 - |lambda|^2): unit-variance states for white-noise inputs
            return 0.5 * torch.log1p(-torch.exp(-2 * torch.exp(self.nu_log.detach())))
        if name == "B":
            return draws.normal(1 / math.sqrt(2 * shape[1]), shape)
        if name == "C":
            return draws.normal(1 / math.sqrt(shape[1] // 2), shape)
        return draws.normal(1.0, shape)  # D

    def eigenvalues(self) -> torch.Tensor:
        """lambda as (2, N): real parts, then imaginary, in real arithmetic."""
        modulus, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)
        return torch.stack((modulus * torch.cos(phase), modulus * torch.sin(phase)))

    def poles(self) -> torch.Tensor:
        """lambda, complex (N,): what each state is multiplied by per step."""
        return torch.complex(*self.eigenvalues())

    def input_weights(self) -> torch.Tensor:
        """gamma B as [re; im] rows (2N, H): u_t (gamma B)^T is one real multiply."""
        return self.B * torch.exp(self.gamma_log).repeat(2)[:, None]

    def output_weights(self) -> torch.Tensor:
        """[C_re | -C_im] (H, 2N): Re(C h) = h [C_re | -C_im]^T for h = [re | im]."""
        n = self.nu_log.shape[0]
        return torch.cat((self.C[:, :n], -self.C[:, n:]), dim=1)

    def mixed(self, u: torch.Tensor) -> torch.Tensor:
        """Re(C h_t) for every step at once: the parallel form without its skip term D u_t."""
        return self.scanned(u, kernels.complex_scan if kernels.available(u.device) else log_depth_scan)

    def plain_parallel(self, u: torch.Tensor) -> torch.Tensor:
        return self.scanned(u, log_depth_scan) + u * self.D

    def scanned(self, u: torch.Tensor, scan: Scan) -> torch.Tensor:
        return scan(u @ self.input_weights().T, self.eigenvalues()) @ self.output_weights().T

    def definition(self, u: torch.Tensor) -> torch.Tensor:
        """The paper's equations in complex numbers, one step at a time."""
        n = self.nu_log.shape[0]
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        B = torch.complex(self.B[:n], self.B[n:]) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C[:, :n], self.C[:, n:])
        h = torch.zeros(u.shape[0], n, dtype=lam.dtype, device=u.device)
        ys = []
        for u_t in u.unbind(1):
            h = lam * h + u_t.to(lam.dtype) @ B.T
            ys.append((h @ C.T).real + self.D * u_t)
        return torch.stack(ys, dim=1)

    def state_size(self) -> int:
        return 2 * self.nu_log.shape[0]

    def step(self, h: torch.Tensor, u_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (batch, [re | im]) and u_t (batch, H) to the next h and y_t."""
        n = self.nu_log.shape[0]
        lam = self.eigenvalues()
        h_re, h_im = h[:, :n], h[:, n:]
        carried = torch.cat((lam[0] * h_re - lam[1] * h_im, lam[0] * h_im + lam[1] * h_re), dim=1)
        h = carried + u_t @ self.input_weights().T
        return h, h @ self.output_weights().T + u_t * self.D


class S4DLayer(Mixer):
    """S4D's recurrence over H channels, each with N/2 complex states (their conjugates make up N;
    B = 1, folded into C, as in s4d.py)."""

    dt_min, dt_max = 0.001, 0.1  # log dt uniform between these: time scales of 10 to 1,000 steps
    recurrent = ("log_dt", "log_A_real", "A_imag")  # S4's recipe gives A and dt their own rate, no decay

    def __init__(self, hidden: int, state: int):
        super().__init__()
        modes = state // 2
        self.log_dt = nn.Parameter(torch.empty(hidden))
        self.log_A_real = nn.Parameter(torch.empty(hidden, modes))
        self.A_imag = nn.Parameter(torch.empty(hidden, modes))
        self.C = nn.Parameter(torch.empty(2, hidden, modes))  # real parts, then imaginary
        self.D = nn.Parameter(torch.empty(hidden))

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        """S4D-Lin (Gu et al. 2022): A_n = -1/2 + i pi n; C complex standard normal; D standard normal."""
        if name == "log_dt":
            return draws.uniform(math.log(self.dt_min), math.log(self.dt_max), shape)
        if name == "log_A_real":
            return torch.full(shape, math.log(0.5))
        if name == "A_imag":
            return math.pi * torch.arange(shape[1], dtype=torch.float32).expand(shape)
        if name == "C":
            return draws.normal(math.sqrt(0.5), shape)
        return draws.normal(1.0, shape)  # D

    def dt_a(self) -> tuple[torch.Tensor, torch.Tensor]:
        """dt A's real and imaginary parts, (H, N/2)."""
        dt = torch.exp(self.log_dt)[:, None]
        return -torch.exp(self.log_A_real) * dt, self.A_imag * dt

    def poles(self) -> torch.Tensor:
        """exp(dt A), complex (H N/2,): what each state is multiplied by per step."""
        return torch.exp(torch.complex(*self.dt_a())).flatten()

    def discretised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero-order hold in real arithmetic: exp(dt A), and C (exp(dt A) - 1) / A (C B-bar, B = 1), as
        real and imaginary parts, each (H, N/2)."""
        dta_re, dta_im = self.dt_a()
        decay = torch.exp(dta_re)
        step_re, step_im = decay * torch.cos(dta_im), decay * torch.sin(dta_im)
        a_re, a_im = -torch.exp(self.log_A_real), self.A_imag
        norm = a_re * a_re + a_im * a_im  # (e - 1) / A = (e - 1) conj(A) / |A|^2
        b_re, b_im = ((step_re - 1) * a_re + step_im * a_im) / norm, (step_im * a_re - (step_re - 1) * a_im) / norm
        c_re, c_im = self.C[0], self.C[1]
        return step_re, step_im, c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re

    def kernel(self, steps: int) -> torch.Tensor:
        """K_l = 2 Re(C B-bar exp(dt A)^l), (H, steps): the layer's response to a unit impulse. The
        Vandermonde product of s4d.py, in real arithmetic: PyTorch's complex exp and its backward are
        slower than the real exp, cos and sin with two batched multiplies (docs/speed.md)."""
        _, _, cb_re, cb_im = self.discretised()
        dta_re, dta_im = self.dt_a()
        t = torch.arange(steps, dtype=cb_re.dtype, device=cb_re.device)
        decay, phase = torch.exp(dta_re[..., None] * t), dta_im[..., None] * t
        real = torch.bmm(cb_re[:, None], decay * torch.cos(phase)) - torch.bmm(cb_im[:, None], decay * torch.sin(phase))
        return 2 * real[:, 0]

    def mixed(self, u: torch.Tensor) -> torch.Tensor:
        """The causal convolution with the kernel (the parallel form without its skip term D u_t), by FFT
        with n = 2 steps (so the circular convolution wraps nothing around), over each channel's contiguous
        row: FFTs along a strided axis of (batch, steps, H) cost more than the two transposes."""
        steps = u.shape[1]
        n = 2 * steps
        rows = u.transpose(1, 2).contiguous()
        spectrum = torch.fft.rfft(rows, n=n) * torch.fft.rfft(self.kernel(steps), n=n)
        return torch.fft.irfft(spectrum, n=n)[..., :steps].transpose(1, 2).contiguous()

    def plain_parallel(self, u: torch.Tensor) -> torch.Tensor:
        """s4d.py's S4D.forward (transposed=False) and S4DKernel.forward as published (state-spaces/s4,
        models/s4/s4d.py: complex Vandermonde kernel, FFT over a transposed view), on these parameters."""
        u = u.transpose(-1, -2)
        L = u.size(-1)
        dt = torch.exp(self.log_dt)
        C = torch.complex(self.C[0], self.C[1])
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        dtA = A * dt.unsqueeze(-1)
        K = dtA.unsqueeze(-1) * torch.arange(L, device=u.device)
        C = C * (torch.exp(dtA) - 1.0) / A
        k = 2 * torch.einsum("hn, hnl -> hl", C, torch.exp(K)).real
        k_f = torch.fft.rfft(k, n=2 * L)
        u_f = torch.fft.rfft(u, n=2 * L)
        y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]
        y = y + u * self.D.unsqueeze(-1)
        return y.transpose(-1, -2)

    def definition(self, u: torch.Tensor) -> torch.Tensor:
        """The recurrence in complex numbers, one step at a time."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        step = torch.exp(torch.exp(self.log_dt)[:, None] * A)
        B = (step - 1) / A
        C = torch.complex(self.C[0], self.C[1])
        x = torch.zeros(u.shape[0], *A.shape, dtype=A.dtype, device=u.device)
        ys = []
        for u_t in u.unbind(1):
            x = step * x + B * u_t[..., None]
            ys.append(2 * (C * x).sum(-1).real + self.D * u_t)
        return torch.stack(ys, dim=1)

    def state_size(self) -> int:
        return 2 * self.log_A_real.numel()

    def step(self, x: torch.Tensor, u_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, [re, im] x H x N/2, flat) and u_t (batch, H) to the next x and y_t; C B-bar stands in
        for B-bar, so the state kept is C x."""
        step_re, step_im, cb_re, cb_im = self.discretised()
        x = x.unflatten(1, (2, *step_re.shape))  # not view(len(x), ...): an export traces len(x) as a constant
        x_re, x_im = x[:, 0], x[:, 1]
        u = u_t[..., None]
        x = torch.stack((step_re * x_re - step_im * x_im + cb_re * u, step_re * x_im + step_im * x_re + cb_im * u), 1)
        return x.flatten(1), 2 * x[:, 0].sum(-1) + self.D * u_t


# --- the stacks -----------------------------------------------------------------------------------------


class Block(nn.Module):
    """One layer: u + GLU(dropout(GELU(mix(LayerNorm(u))))), the position-wise part shared by every form;
    the dropout (training only) is S4's, one mask per sequence."""

    def __init__(self, mixer: nn.Module, hidden: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.mixer = mixer
        self.glu = nn.Linear(hidden, 2 * hidden, bias=bias)
        self.dropout = dropout

    def forward(self, u: torch.Tensor, form: str) -> torch.Tensor:
        """u after this layer, its recurrence computed by the mixer's method ``form`` (parallel,
        plain_parallel, definition); where the engine runs, the parallel form's passes between the
        multiplies by gate.cpp."""
        v = self.norm(u)
        if form == "parallel" and kernels.available(u.device):
            gelu = self.dropped(kernels.skip(self.mixer.mixed(v), v, self.mixer.D))
            return kernels.gate(u, gelu @ self.glu.weight.T, self.glu.bias)
        return u + self.after(getattr(self.mixer, form)(v))

    def after(self, y: torch.Tensor) -> torch.Tensor:
        """What follows the recurrence, one position at a time."""
        return nn.functional.glu(self.glu(self.dropped(nn.functional.gelu(y))), dim=-1)

    def dropped(self, y: torch.Tensor) -> torch.Tensor:
        return sequence_dropout(y, self.dropout) if self.training and self.dropout else y


class LinearRecurrentClassifier(SequenceClassifier):
    """A stack of :class:`Block`'s between an encoder and a decoder; subclasses name the recurrence."""

    readouts = ("last", "mean-logits")
    takes = ("dropout",)
    default_state = 64
    layer_type: ClassVar[type[nn.Module]]

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec, self.state_size = spec, spec.state or self.default_state
        H = spec.hidden
        self.encoder = nn.Linear(spec.inputs, H, bias=spec.bias)
        self.blocks = nn.ModuleList(
            Block(self.layer_type(H, self.state_size), H, spec.bias, spec.dropout) for _ in range(spec.layers)
        )
        self.decoder = nn.Linear(H, spec.classes, bias=spec.bias)

    # --- the forms ---------------------------------------------------------------------------------

    def logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        return self.through(x, "parallel" if fast else "definition")

    def definition(self, x: torch.Tensor) -> torch.Tensor:
        """The recurrences step by step in complex numbers, layer after layer, with autograd: the reference."""
        return self.through(x, "definition")

    def plain_forms(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {"plain parallel": lambda x: self.through(x, "plain_parallel")}

    def through(self, x: torch.Tensor, form: str) -> torch.Tensor:
        """Per-step logits (steps, batch, classes), every layer's recurrence by its mixer's ``form``."""
        u = self.encoder(x)
        for block in self.blocks:
            u = block(u, form)
        return self.decoder(u).transpose(0, 1)

    def state_sizes(self) -> list[int]:
        return [block.mixer.state_size() for block in self.blocks]

    def advance(self, x_t: torch.Tensor, state: State) -> tuple[State, torch.Tensor]:
        """One input x_t (batch, inputs) in, every layer's state updated once, that step's logits out."""
        u, after = self.encoder(x_t), []
        for block, s in zip(self.blocks, state, strict=True):
            s, y = block.mixer.step(s, block.norm(u))
            u = u + block.after(y)
            after.append(s)
        return after, self.decoder(u)

    # --- what the trainer, the recipes and the figures ask --------------------------------------------

    def training_path(self, device: torch.device, fast: bool = True) -> str:
        return self.parallel_path(device) if fast else AUTOGRAD_PATH

    def parallel_path(self, device: torch.device) -> str:
        raise NotImplementedError

    def draw_order(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def initial_value(self, name: str, shape: tuple[int, ...], draws: Draws) -> torch.Tensor:
        *owner, leaf = name.split(".")
        module = self.get_submodule(".".join(owner))
        if isinstance(module, self.layer_type):
            return module.initial_value(leaf, shape, draws)
        if isinstance(module, nn.LayerNorm):
            return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
        if leaf == "bias":
            return torch.zeros(shape)
        bound = 1 / math.sqrt(shape[1])  # nn.Linear's default bound, 1/sqrt(fan_in)
        return draws.uniform(-bound, bound, shape)

    def recurrence_eigenvalues(self) -> list[np.ndarray]:
        """Each layer's poles: how long its states remember (|pole| near 1) and how they oscillate."""
        return [block.mixer.poles().detach().cpu().numpy() for block in self.blocks]

    def eval_chunk(self) -> int:
        """Images per evaluation pass: ~128 MB of float32 buffers, 1 to 1,000 images."""
        per_image = (self.spec.steps + 1) * (8 * self.spec.hidden + 4 * self.state_size)
        return max(1, min(1000, (1 << 25) // per_image))


@register_cell("lru")
class LRU(LinearRecurrentClassifier):
    about = "h_t = lambda h_{t-1} + gamma B u_t, y_t = Re(C h_t) + D u_t, complex diagonal (Orvieto et al. 2023)"
    init = "ring"
    inits = ("ring",)
    layer_type = LRULayer
    recurrent = tuple(f"blocks.*.mixer.{name}" for name in LRULayer.recurrent)

    def parallel_path(self, device: torch.device) -> str:
        if kernels.available(device):
            return "the compiled scan (scan.cpp) and PyTorch"
        return "PyTorch's log-depth scan"


@register_cell("s4d")
class S4D(LinearRecurrentClassifier):
    about = "x_t = exp(dt A) x_{t-1} + B-bar u_t, y_t = 2 Re(C x_t) + D u_t, A diagonal (Gu et al. 2022)"
    init = "s4d-lin"
    inits = ("s4d-lin",)
    layer_type = S4DLayer
    recurrent = tuple(f"blocks.*.mixer.{name}" for name in S4DLayer.recurrent)

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        super().check(spec)
        state = spec.state or cls.default_state
        if state % 2:
            raise SeqmnistError(
                f"--state {state}: the s4d cell keeps N/2 complex states and their conjugates, so N must be even"
            )

    def parallel_path(self, device: torch.device) -> str:
        return "PyTorch's FFT convolution"
