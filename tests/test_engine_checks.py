"""The compiled engine refuses a wrong call with a Python exception before it reads or writes any
buffer: each entry point gets the call engine.py makes, which must work, then that call with one
argument wrong at a time. And it runs on PyTorch's own OpenMP runtime, the only one in the process."""

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from seqmnist import engine, native

NATIVE = native.native_loops()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the compiled engine did not build here")

BATCH, STEPS, INPUTS, HIDDEN, CLASSES = 6, 4, 3, 5, 4
FORWARD = ("z", "state", "x", "U", "W", "b", "V", "c", "M", "activation", "input_scale", "labels", "grad")
FORWARD += ("readout", "inked_from")
BACKWARD = ("grad", "above", "state", "U", "W", "b", "V", "c", "Bt", "padded", "activation", "input_scale")
BACKWARD += ("scale", "below", "kappa_below", "inked_from")


def _model(bias: bool) -> tuple:
    """A two-layer tanh model, its workspace after a forward pass with labels, and that pass's inputs."""
    g = torch.Generator().manual_seed(0)
    layers = [
        (
            torch.randn(inputs, HIDDEN, generator=g) * 0.5,
            torch.randn(HIDDEN, HIDDEN, generator=g) * 0.3,
            torch.randn(HIDDEN, generator=g) if bias else None,
        )
        for inputs in (INPUTS, HIDDEN)
    ]
    V, c = torch.randn(HIDDEN, CLASSES, generator=g), torch.randn(CLASSES, generator=g) if bias else None
    x, y = torch.rand(BATCH, STEPS, INPUTS, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)
    x[:2, :2] = 0  # blank first rows: an unbiased model skips them (inked_from)
    ws = engine.Workspace()
    engine._forward(ws, x, layers, V, c, "tanh", y, "mean-softmax")
    return ws, x, y, layers, V, c


def forward_call(bias: bool = False, depth: int = 1) -> dict:
    ws, x, y, layers, V, c = _model(bias)
    arguments = engine._forward_arguments(ws, x, layers, V, c, "tanh", y, "mean-softmax", depth)
    return dict(zip(FORWARD, arguments, strict=True))


def backward_call(bias: bool = False, depth: int = 1) -> dict:
    ws, _, _, layers, V, c = _model(bias)
    return dict(zip(BACKWARD, engine._backward_arguments(ws, layers, V, c, "tanh", 0.1, depth), strict=True))


def lower_backward_call() -> dict:
    return backward_call(depth=0)


def biased_forward_call() -> dict:
    return forward_call(bias=True)


def biased_backward_call() -> dict:
    return backward_call(bias=True)


def inputs_call() -> dict:
    return {"x": torch.rand(BATCH, STEPS, INPUTS)}


ENTRIES: dict[Callable[[], dict], tuple[str, tuple[str, ...]]] = {
    forward_call: ("forward_layer", FORWARD),
    biased_forward_call: ("forward_layer", FORWARD),
    backward_call: ("backward_layer", BACKWARD),
    lower_backward_call: ("backward_layer", BACKWARD),
    biased_backward_call: ("backward_layer", BACKWARD),
    inputs_call: ("first_inked_steps", ("x",)),
}


def call(make: Callable[[], dict], **changes) -> object:
    """The entry point ``make``'s call is for, with ``changes`` (name: new value, or a function of the
    valid value) to its arguments."""
    name, order = ENTRIES[make]
    arguments = make()
    for key, change in changes.items():
        arguments[key] = change(arguments[key]) if callable(change) else change
    return getattr(NATIVE, name)(*(arguments[key] for key in order))


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values, every other float of the last dimension: not contiguous."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def transposed_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values, column-major: not contiguous."""
    return t.t().contiguous().t()


def one_more(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.zeros(*(n + (d == dim) for d, n in enumerate(t.shape)), dtype=t.dtype)


def one_less(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t.narrow(dim, 0, t.shape[dim] - 1).contiguous()


def double(t: torch.Tensor) -> torch.Tensor:
    return t.double()


def on_meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


@pytest.mark.parametrize("make", list(ENTRIES), ids=lambda make: make.__name__)
def test_the_calls_engine_py_makes_work(make):
    assert call(make) is not None


def _labels_out_of_range(labels: torch.Tensor) -> torch.Tensor:
    labels = labels.clone()
    labels[3] = CLASSES
    return labels


WRONG: list[tuple[Callable[[], dict], dict, str]] = [
    # (the valid call, what is wrong, what the error must say)
    # -- the layer's weights, as every entry point with a layer checks them
    (forward_call, {"U": double}, "U must be Float, not Double"),
    (forward_call, {"U": on_meta}, "U must be on the CPU"),
    (forward_call, {"U": transposed_copy}, "U must be contiguous"),
    (forward_call, {"U": lambda U: U[0]}, "U must have 2 dimensions, not 1"),
    (forward_call, {"U": lambda U: U[:, :0]}, "U must be .*neither 0"),
    (forward_call, {"W": one_more(1)}, "W must be"),
    (forward_call, {"W": lambda W: W[None]}, "W must have 2 dimensions, not 3"),
    (forward_call, {"V": one_less(0)}, "V must be"),
    (forward_call, {"V": lambda V: V[:, :0]}, "V must be"),
    (forward_call, {"activation": 2}, "unknown activation 2"),
    (biased_forward_call, {"b": one_more(0)}, "b must be shaped"),
    (biased_forward_call, {"b": None}, "c needs V and b"),  # was: c's gradient read past the sums
    (biased_forward_call, {"c": one_less(0)}, "c must be shaped"),
    (biased_backward_call, {"b": None}, "c needs V and b"),
    (biased_backward_call, {"c": double}, "c must be Float"),
    (backward_call, {"W": one_less(0)}, "W must be"),
    # -- forward_layer's buffers
    (forward_call, {"state": double}, "state must be Float"),
    (forward_call, {"state": lambda s: s[:1]}, "T and batch at least 1"),
    (forward_call, {"state": lambda s: s[:, :, : 2 * HIDDEN - 1].contiguous()}, "narrower than"),
    (forward_call, {"M": one_less(0)}, "M must be"),
    (forward_call, {"M": lambda M: M[:, : HIDDEN + CLASSES - 1].contiguous()}, "M must be"),
    (forward_call, {"M": strided}, "M must be contiguous"),
    (forward_call, {"x": lambda x: x[:, :-1]}, "x must be shaped"),
    (forward_call, {"x": lambda x: x[:-1]}, "x must be shaped"),
    (forward_call, {"x": double}, "x must be Float"),
    (forward_call, {"x": lambda x: strided(x.contiguous())}, r"x's rows must be contiguous"),
    (forward_call, {"z": None}, "z goes with V"),
    (forward_call, {"z": one_more(1)}, "z must be shaped"),
    (forward_call, {"V": None}, "z goes with V"),
    # -- forward_layer's loss
    (forward_call, {"grad": None}, "labels and grad go together"),
    (forward_call, {"labels": None}, "labels and grad go together"),
    (forward_call, {"grad": one_less(0)}, "grad must be shaped"),
    (forward_call, {"labels": lambda y: y.int()}, "labels must be Long"),
    (forward_call, {"labels": lambda y: y[:-1]}, "labels must be shaped"),
    (forward_call, {"labels": lambda y: y.repeat(2)[::2]}, "labels must be contiguous"),
    (forward_call, {"labels": _labels_out_of_range}, "label 4 of image 3 is not in"),
    (forward_call, {"labels": lambda y: y - CLASSES}, "is not in"),
    (forward_call, {"readout": 3}, "unknown readout 3"),
    (forward_call, {"readout": -1}, "unknown readout -1"),
    # -- the blank steps to skip, in both passes
    (forward_call, {"inked_from": lambda lead: lead[:-1]}, "inked_from must be shaped"),
    (forward_call, {"inked_from": lambda lead: lead.float()}, "inked_from must be Long"),
    (biased_forward_call, {"inked_from": torch.zeros(BATCH, dtype=torch.long)}, "cannot be skipped"),
    (backward_call, {"inked_from": lambda lead: lead.int()}, "inked_from must be Long"),
    (biased_backward_call, {"inked_from": torch.zeros(BATCH, dtype=torch.long)}, "cannot be skipped"),
    # -- backward_layer's buffers
    (backward_call, {"state": lambda s: s[:, :, : 2 * HIDDEN - 1].contiguous()}, "narrower than"),  # was unchecked
    (backward_call, {"state": lambda s: s[:1]}, "T and batch at least 1"),  # was: T = -1
    (backward_call, {"padded": HIDDEN - 1}, r"padded \(4\) is less than hidden"),
    (backward_call, {"padded": lambda p: p + 1}, "Bt must be"),
    (backward_call, {"Bt": one_more(1)}, "Bt must be"),
    (backward_call, {"Bt": lambda Bt: Bt[: HIDDEN + CLASSES - 1].contiguous()}, "Bt must be"),
    (backward_call, {"Bt": double}, "Bt must be Float"),
    (backward_call, {"grad": None}, "grad goes with V"),
    (backward_call, {"grad": one_less(0)}, "grad must be shaped"),
    (backward_call, {"grad": lambda g: g.transpose(0, 1).contiguous().transpose(0, 1)}, "grad must be contiguous"),
    (backward_call, {"above": torch.zeros(STEPS + 1, BATCH, HIDDEN)}, "above goes with a layer without V"),
    (backward_call, {"below": one_less(0)}, "below must be shaped"),  # was: one dimension of three checked
    (backward_call, {"below": one_less(1)}, "below must be shaped"),
    (backward_call, {"below": one_more(2)}, "below must be shaped"),
    (backward_call, {"below": double}, "below must be Float"),
    (lower_backward_call, {"above": None}, "above goes with a layer without V"),
    (lower_backward_call, {"above": one_less(0)}, "above must be shaped"),  # was: one dimension of three checked
    (lower_backward_call, {"above": one_less(1)}, "above must be shaped"),
    (lower_backward_call, {"above": strided}, "above must be contiguous"),
    (lower_backward_call, {"grad": torch.zeros(STEPS + 1, BATCH, CLASSES)}, "grad goes with V"),
    (lower_backward_call, {"below": torch.zeros(STEPS + 1, BATCH, INPUTS)}, "Bt must be"),
    # -- first_inked_steps
    (inputs_call, {"x": double}, "x must be Float"),
    (inputs_call, {"x": lambda x: x[0]}, "x must have 3 dimensions, not 2"),
    (inputs_call, {"x": strided}, "x's rows must be contiguous"),
    (inputs_call, {"x": on_meta}, "x must be on the CPU"),
]


def _case_id(case: tuple) -> str:
    make, changes, message = case
    return "-".join([make.__name__.removesuffix("_call"), *changes, re.sub(r"\W+", "_", message).strip("_")])


@pytest.mark.parametrize(("make", "changes", "message"), WRONG, ids=[_case_id(case) for case in WRONG])
def test_a_wrong_argument_is_refused(make, changes, message):
    with pytest.raises(RuntimeError, match=message):
        call(make, **changes)


@pytest.mark.parametrize("make", [forward_call, backward_call, inputs_call], ids=lambda make: make.__name__)
def test_a_missing_tensor_is_refused(make):
    with pytest.raises(TypeError, match="incompatible function arguments"):
        call(make, **{"x" if make is inputs_call else "state": None})


def test_a_size_beyond_blas_is_refused():
    # BLAS takes 32-bit sizes: a row of 2^31 floats would have wrapped around to a negative stride.
    # 16 GiB of address space, never touched (the check comes before any read).
    try:
        state = torch.empty(2, 1, 2**31)
    except RuntimeError:
        pytest.skip("16 GiB of address space not available here")
    arguments = forward_call(depth=0) | {"state": state, "x": torch.rand(1, 1, INPUTS), "z": None}
    arguments |= {"V": None, "labels": None, "grad": None, "inked_from": None}
    with pytest.raises(RuntimeError, match="exceeds BLAS's 32-bit sizes"):
        NATIVE.forward_layer(*(arguments[key] for key in FORWARD))


# -- OpenMP: one runtime, PyTorch's


def _torch_lib() -> Path:
    return (Path(torch.__file__).parent / "lib").resolve()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="no /proc to list the process's libraries")
def test_one_openmp_runtime_in_the_process_pytorchs():
    (runtime,) = native.openmp_runtimes()
    assert Path(runtime).parent == _torch_lib()


@pytest.mark.skipif(shutil.which("ldd") is None, reason="no ldd here")
def test_the_engine_links_pytorchs_openmp_runtime():
    listing = subprocess.run(["ldd", str(native.built_library())], capture_output=True, text=True, check=True).stdout
    resolved = re.findall(r"^\s*(\S+) => (\S+)", listing, re.MULTILINE)
    runtimes = {Path(path).resolve() for name, path in resolved if native._OPENMP_FILE.fullmatch(name)}
    assert runtimes and {runtime.parent for runtime in runtimes} == {_torch_lib()}, listing


def test_an_engine_bringing_a_second_openmp_runtime_is_not_used(monkeypatch, capsys):
    mapped = {"/torch/lib/libgomp.so.1"}
    monkeypatch.setattr(native, "openmp_runtimes", lambda: set(mapped))

    def load_bringing_its_own() -> object:
        mapped.add("/usr/lib/libgomp.so.1")
        return object()

    monkeypatch.setattr(native, "_load_or_build_unchecked", load_bringing_its_own)
    assert native.native_loops.__wrapped__() is None
    assert "second OpenMP runtime (/usr/lib/libgomp.so.1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "runtime"),
    [
        ("libgomp.so.1", True),
        ("libgomp-a34b3233.so.1", True),
        ("libiomp5.so", True),
        ("libomp.so.5", True),
        ("libgomp.so.1.0.0", True),
        ("libompitrace.so", False),
        ("libtorch_cpu.so", False),
    ],
)
def test_openmp_runtimes_are_told_by_name(name, runtime):
    assert bool(native._OPENMP_FILE.fullmatch(name)) == runtime


def test_an_engine_whose_readout_codes_are_not_ours_is_not_used(monkeypatch, capsys):
    # engine.cpp's enum and seqmnist.readouts must agree: a library that counts otherwise is refused.
    from seqmnist.readouts import get_readout

    monkeypatch.setattr(get_readout("last"), "engine_code", 2)
    monkeypatch.setattr(get_readout("mean-logits"), "engine_code", 1)
    assert native.native_loops.__wrapped__() is None
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("seqmnist: warning: the CPU engine's readout codes {") and "are not seqmnist.readouts'" in line
    )


def test_the_engine_exports_the_activations_it_runs():
    assert dict(NATIVE.activations) == {"tanh": (0, 2.0, 4.0), "relu": (1, 1.0, 1.0)}
    assert engine.covers("tanh") and engine.covers("relu") and not engine.covers(None) and not engine.covers("gelu")
