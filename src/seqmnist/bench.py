"""``seqmnist bench``: our training step against the plain PyTorch loop, in one process and one run.

The plain loop is what a user would write for the same cell and task: ``nn.RNN`` / ``nn.LSTM`` /
``nn.GRU`` (batch-first, the full sequence), an ``nn.Linear`` readout, the readout's loss, autograd
and the optimiser; for a cell PyTorch has no module for (indrnn, lru, s4d), the cell's equations in a
Python loop. A model that names other plain forms (its ``plain_forms()``: the linear cells' parallel
form as plain PyTorch writes it) is timed against each as well, in the same rounds.
Ours is a run's own step (:meth:`SequenceClassifier.loss`: the compiled engine for the elementwise
cells, PyTorch's fused modules for LSTM and GRU, the parallel form for lru and s4d).

The machine this was written on is shared and noisy, so every comparison is interleaved (plain,
ours, plain, ours, ...) over several rounds and reported as the ratio of medians; absolute numbers
drift from run to run, ratios much less.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from . import native
from .config import Config, RecipeSettings
from .data import TRAIN_IMAGES
from .machine import keep_freed_memory
from .model import AUTOGRAD_PATH, ENGINE_PATH, NUM_CLASSES, Draws, ModelSpec, SequenceClassifier, build_model
from .readouts import get_readout
from .recipes import make_optimizer
from .registry import cell_names, get_cell
from .train import train_step

Step = Callable[[torch.Tensor, torch.Tensor], None]


class PlainRNN(nn.Module):
    """A model the way most PyTorch code would write it, starting from one of ours' weights (a cell's
    initialisation decides how fast its gradients fade, and how often they turn denormal): PyTorch's
    recurrent module with a Linear readout on every step's state, or, for a cell PyTorch has no module
    for, its equations in a Python loop (our definition); or, given a ``form``, that plain form of the
    cell's (:func:`plain_forms`). The readout's loss by autograd."""

    def __init__(self, model: SequenceClassifier, form: str | None = None):
        super().__init__()
        self.form = form
        if form is None and has_torch_module(model):
            self.rnn, self.readout = model.to_torch()
        else:
            self.loop = copy.deepcopy(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits, (steps, batch, classes)."""
        if self.form is not None:
            return plain_forms(self.loop)[self.form](x)
        if not hasattr(self, "rnn"):
            return self.loop.logits(x, fast=False)
        states, _ = self.rnn(x)
        return self.readout(states).transpose(0, 1)


def plain_trainers(spec: ModelSpec) -> dict[str, Step]:
    """The plain PyTorch ways of the same training step: "plain" (PyTorch's module, or the loop), then
    each plain form the cell names."""
    forms = plain_forms(our_model(spec))
    return {"plain": plain_trainer(spec), **{form: plain_trainer(spec, form) for form in forms}}


def has_torch_module(model: SequenceClassifier) -> bool:
    """Whether PyTorch has a module for the model's cell (the gated cells, nn.RNN's tanh and relu)."""
    return hasattr(model, "to_torch") and model.has_torch_module()


def plain_forms(model: SequenceClassifier) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The ways besides PyTorch's module or the step loop that plain code would compute the model's
    logits, by name, where its family names some (the linear cells' ``plain_forms``)."""
    return model.plain_forms() if hasattr(model, "plain_forms") else {}


def plain_trainer(spec: ModelSpec, form: str | None = None, lr: float = 0.01) -> Step:
    model = PlainRNN(our_model(spec), form)
    readout = get_readout(spec.readout)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = readout.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def our_model(spec: ModelSpec) -> SequenceClassifier:
    return build_model(spec).init_weights(Draws(torch.Generator().manual_seed(0)))


def our_trainer(spec: ModelSpec, lr: float = 0.01) -> Step:
    """The project's training step, as the training loop takes it."""
    model = our_model(spec)
    optimizer = make_optimizer(model, RecipeSettings(lr=lr), own_step=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, optimizer, x, y)

    return step


def flops_per_image(rows: int = 28, hidden: int = 200, inputs: int = 28) -> int:
    """Multiply-add work of one training image of the seed's model, forward and backward, counted as
    2 FLOPs each. Forward: x U, s W, s V per row. Backward: the gradients of s (through W and V) and of
    U, W, V; the gradient of the input is not needed."""
    d, h, c = inputs, hidden, NUM_CLASSES
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


def compare(config: Config, seconds: float, rounds: int = 5) -> dict:
    """Images/s of the plain ways and of ours on the same synthetic batches, interleaved."""
    spec = config.model_spec()
    batch = config.recipe.batch_size
    g = torch.Generator().manual_seed(0)
    n_batches = 4
    xs = torch.rand(n_batches, batch, spec.steps, spec.inputs, generator=g)
    ys = torch.randint(0, NUM_CLASSES, (n_batches, batch), generator=g)
    trainers = {**plain_trainers(spec), "ours": our_trainer(spec)}
    # Size each timed slice to about seconds / (trainers x rounds) from one warm-up pass.
    per_batch = {}
    for name, step in trainers.items():
        step(xs[0], ys[0])
        per_batch[name] = _seconds(lambda s=step: [s(x, y) for x, y in zip(xs, ys, strict=True)]) / n_batches
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers.items())
    for round_ in range(rounds):
        turn = round_ % len(order)  # each round starts one later: none always runs first, or after another
        for name, step in order[turn:] + order[:turn]:
            count = max(2, round(seconds / (len(trainers) * rounds) / per_batch[name]))
            elapsed = _seconds(lambda s=step, k=count: [s(xs[i % n_batches], ys[i % n_batches]) for i in range(k)])
            rates[name].append(count * batch / elapsed)
    plain, ours = statistics.median(rates["plain"]), statistics.median(rates["ours"])
    others = {name: _against(rates["ours"], rates[name]) for name in trainers if name not in ("plain", "ours")}
    return {
        "cell": spec.cell,
        "task": config.task.task,
        "steps": spec.steps,
        "inputs": spec.inputs,
        "hidden": spec.hidden,
        "layers": spec.layers,
        "bias": spec.bias,
        "readout": spec.readout,
        "batch": batch,
        "baseline_samples_per_s": plain,
        "samples_per_s": ours,
        "speedup": ours / plain,
        "speedup_range": _against(rates["ours"], rates["plain"])["speedup_range"],
        "others": others,
        "path": our_path(spec),
    }


def _against(ours: list[float], plain: list[float]) -> dict:
    """Ours against one plain way: its median rate, the ratio of medians, and each round's own ratio (how
    far the machine's drift moves the answer)."""
    round_ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    return {
        "samples_per_s": statistics.median(plain),
        "speedup": statistics.median(ours) / statistics.median(plain),
        "speedup_range": [min(round_ratios), max(round_ratios)],
    }


PATH_LABELS = {ENGINE_PATH: "compiled", AUTOGRAD_PATH: "autograd"}  # else PyTorch's fused module


def our_path(spec: ModelSpec) -> str:
    """The engine, autograd, PyTorch's own module (as the plain loop's), or the cell's own path in words."""
    model = build_model(spec)
    path = model.training_path(torch.device("cpu"))
    return PATH_LABELS.get(path, "nn module" if has_torch_module(model) else path)


SCALING = ((256, 200), (1024, 200), (100, 512))


def seed_run(seconds: float, scaling_seconds: float) -> dict:
    """The seed's shape (batch 100, hidden 200) against the multiply peak, then the scaling shapes."""
    seed = Config()
    peak = gemm_peak()
    main = compare(seed, seconds)
    scaling = [compare(seed.replace(batch_size=b, hidden=h), scaling_seconds, rounds=3) for b, h in SCALING]
    peak = max(peak, gemm_peak())  # measured again after the load, the better of the two
    for row in [main, *scaling]:
        row["gflops"] = row["samples_per_s"] * flops_per_image(28, row["hidden"]) / 1e9
        row["peak_fraction"] = row["gflops"] / peak
    return {
        "batch": 100,
        "hidden": 200,
        "rows": 28,
        "flops_per_image": flops_per_image(),
        "gemm_peak_gflops": peak,
        "samples_per_s": main["samples_per_s"],
        "baseline_samples_per_s": main["baseline_samples_per_s"],
        "speedup": main["speedup"],
        "gflops": main["gflops"],
        "baseline_gflops": main["baseline_samples_per_s"] * flops_per_image() / 1e9,
        "peak_fraction": main["peak_fraction"],
        "native": native.native_loops() is not None,  # false: ours ran on PyTorch's modules
        "threads": torch.get_num_threads(),
        "scaling": [main, *scaling],
    }


def cells_run(configs: list[Config], seconds: float) -> dict:
    """Each configuration's comparison, side by side, with the memory setting ``train`` runs with on the
    CPU (:func:`seqmnist.machine.keep_freed_memory`: the pixel tasks' tensors of tens of MB come from the
    heap, not fresh mappings). It is the process's, so the plain ways run with it too."""
    kept = keep_freed_memory()
    return {
        "native": native.native_loops() is not None,
        "threads": torch.get_num_threads(),
        "freed_memory_kept": kept,
        "comparisons": [compare(config, seconds, rounds=3) for config in configs],
    }


MATRIX_READOUTS = {"rows": "mean-softmax", "pixel": "last"}  # each task's usual readout


def configuration(shape: dict) -> Config:
    """The seed's settings with ``shape``'s (flat names); unless it says otherwise, a cell other than the
    seed's has biases, and a cell that does not take the seed's readout reads out by its own first."""
    cell = get_cell(shape.get("cell", ModelSpec.cell))
    defaults = {"bias": True} if cell.name != ModelSpec.cell else {}
    if ModelSpec.readout not in cell.readouts:
        defaults["readout"] = cell.readouts[0]
    return Config.from_settings("seed", **{**defaults, **shape})


def preset_configs(names: list[str], shape: dict) -> list[Config]:
    """Each named preset's settings with ``shape``'s on top (flat names): the model, task and batch its
    runs train."""
    return [Config.from_settings(name, **shape) for name in names]


def matrix_configs(hidden: int | None = None) -> list[Config]:
    """Every cell on rows (28 steps, hidden 128 with a bias) and on pixel (784 steps, hidden 128), with
    the task's usual readout where the cell takes it: what the speed claims of the presets rest on."""
    configs = []
    for task, readout in MATRIX_READOUTS.items():
        for cell in cell_names():
            shape = {"task": task, "cell": cell, "hidden": hidden or 128}
            configs.append(configuration(shape | ({"readout": readout} if readout in get_cell(cell).readouts else {})))
    return configs


def format_seed_table(result: dict) -> str:
    peak = result["gemm_peak_gflops"]
    lines = [
        f"float32 multiply peak (2048x2048, torch): {peak:.0f} GFLOP/s on {result['threads']} threads",
        f"work per training image (28 rows): {result['flops_per_image'] / 1e6:.2f} MFLOP",
        "",
        f"{'batch':>5} {'hidden':>6} {'path':>6} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'speedup':>8}",
    ]
    for row in result["scaling"]:
        for path, rate in (("plain", row["baseline_samples_per_s"]), ("ours", row["samples_per_s"])):
            gf = rate * flops_per_image(28, row["hidden"]) / 1e9
            speedup = "" if path == "plain" else f"{rate / row['baseline_samples_per_s']:.2f}x"
            lines.append(
                f"{row['batch']:>5} {row['hidden']:>6} {path:>6} {rate:>9.0f} {gf:>8.1f} {gf / peak:>8.0%} {speedup:>8}"
            )
    lines.append("")
    lines.append(_path_note(result["native"]))
    return "\n".join(lines)


def format_cells_table(result: dict) -> str:
    lines = [
        f"{result['threads']} threads; images/s of a training step (batch, forward, backward, SGD step)",
        "",
        f"{'task':>6} {'steps':>5} {'cell':>7} {'size':>7} {'batch':>5} {'readout':>12} {'plain':>9} {'ours':>9} "
        f"{'speedup':>8} {'rounds':>11} {'epoch s':>7}  ours runs on",
    ]
    for row in result["comparisons"]:
        low, high = row["speedup_range"]
        size = f"{row['layers']}x{row['hidden']}"
        lines.append(
            f"{row['task']:>6} {row['steps']:>5} {row['cell']:>7} {size:>7} {row['batch']:>5} {row['readout']:>12} "
            f"{row['baseline_samples_per_s']:>9.0f} {row['samples_per_s']:>9.0f} {row['speedup']:>7.2f}x "
            f"{low:>5.2f}-{high:<5.2f} {TRAIN_IMAGES / row['samples_per_s']:>7.0f}  {row['path']}"
        )
        for name, other in row.get("others", {}).items():
            low, high = other["speedup_range"]
            lines.append(
                f"{name:>47} {other['samples_per_s']:>9.0f} {row['samples_per_s']:>9.0f} "
                f"{other['speedup']:>7.2f}x {low:>5.2f}-{high:.2f}"
            )
    lines += [
        "",
        "size: layers x hidden; rounds: each round's own ratio, the spread the machine's drift gives; epoch s:",
        f"ours' seconds for an epoch's {TRAIN_IMAGES:,} training images at this rate (with SGD's step, not a "
        "preset's optimiser; validation not counted)",
        _path_note(result["native"]),
    ]
    if result.get("freed_memory_kept"):
        lines.append("memory: freed memory kept for the next step, as train keeps it on the CPU (both sides)")
    same = sorted({row["cell"] for row in result["comparisons"] if row["path"] == "nn module"})
    if same:
        lines.append(f"{', '.join(same)}: the same PyTorch module on both sides, so a tie is the most they can show")
    return "\n".join(lines)


def _path_note(native: bool) -> str:
    if native:
        return (
            "plain: PyTorch's module and autograd (indrnn, lru, s4d: a Python loop; plain parallel: the linear "
            "cells' parallel form in plain PyTorch); ours: the compiled engine, the same module, or the parallel form"
        )
    return "ours: on PyTorch's modules here (engine.cpp did not build)"
