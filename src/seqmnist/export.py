"""A trained run as ONNX, to run where PyTorch is not: onnxruntime, a browser, a phone.

    model.onnx       the whole sequence: x (batch, steps, inputs) -> probabilities (batch, classes),
                     running (batch, steps, classes), final_state
    model.step.onnx  one step, for streaming: x_t (batch, inputs), state (batch, width) -> next_state,
                     probabilities (batch, classes)

The step form is the cell's own step (:meth:`SequenceClassifier.advance`, plain tensor operations, the
definition every fast path is tested against) under the readout's (:meth:`Readout.stream`), traced by
torch.onnx's exporter; the compiled engine's loops are C++ that no exporter sees. Its state packs the
cell's state tensors, the readout's running total and the count of steps read, so it starts at zeros
and its probabilities after step t are the readout's running belief (:meth:`Readout.running`), what
``predict`` and the web page show row by row. The whole sequence is ONNX's Scan of that step: the
exporter would unroll a Python loop over the steps (minutes for 784 steps, a file as long).

Each file's metadata (``seqmnist``, JSON) says how an image becomes the sequence (pixel = byte /
input_scale, the task, a permuted task's pixel order), what the image must look like first (MNIST's
form: 28x28, light ink on dark, in a 20x20 box centred by mass; how a photo is made so) and lays out
the state.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxscript  # noqa: F401  (torch.onnx's exporter needs it: missing, the CLI says so in one line)
import torch
from torch import nn

from .errors import SeqmnistError
from .files import atomic_path
from .mnistify import BOX, CENTRE
from .model import SequenceClassifier
from .runs import TrainedModel
from .sequence import SIDE

OPSET = 18  # onnxruntime 1.16 (2023) and later run it


class OneStep(nn.Module):
    """One step: the step's input and the packed state to the next state and the running belief."""

    def __init__(self, model: SequenceClassifier):
        super().__init__()
        self.model = model
        self.parts = [*model.state_sizes(), model.spec.classes, 1]  # the cell's, the readout's total, steps read

    def forward(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *cell_state, total, steps = state.split(self.parts, dim=1)
        steps = steps + 1
        cell_state, z = self.model.advance(x_t, cell_state)
        total, probabilities = self.model.readout.stream(total, z, steps)
        return torch.cat([*cell_state, total, steps], dim=1), probabilities


@dataclass(frozen=True)
class Exported:
    """The two files written and the shapes they take."""

    sequence: Path
    step: Path
    steps: int
    inputs: int
    state_width: int
    classes: int

    def describe(self) -> list[str]:
        return [
            f"{self.sequence}: the whole sequence, x (batch, {self.steps}, {self.inputs}) -> probabilities "
            f"(batch, {self.classes}) and running (batch, {self.steps}, {self.classes}), the belief after each step",
            f"{self.step}: one step, x_t (batch, {self.inputs}) and state (batch, {self.state_width}; zeros before "
            f"the first step) -> next_state and probabilities (batch, {self.classes})",
        ]


def step_path(path: Path) -> Path:
    """Where the step form goes beside the whole sequence's FILE: model.onnx -> model.step.onnx."""
    path = Path(path)
    return path.with_name((path.name.removesuffix(".onnx")) + ".step.onnx")


def export_onnx(trained: TrainedModel, path: Path) -> Exported:
    """Write ``trained`` as ONNX: the whole sequence to ``path``, one step beside it (:func:`step_path`)."""
    model = trained.model
    steps, inputs = trained.config.task.steps_inputs
    step = OneStep(model)
    width = sum(step.parts)
    metadata = json.dumps(describe_interface(trained, step.parts))
    step_model = _export_step(step, inputs, width)
    for form, file in ((step_model, step_path(path)), (over_sequence(step_model, width), path)):
        onnx.helper.set_model_props(form, {"seqmnist": metadata})
        onnx.checker.check_model(form, full_check=True)
        try:
            with atomic_path(file) as tmp:
                onnx.save(form, tmp)
        except OSError as exc:
            raise SeqmnistError(f"{file}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return Exported(Path(path), step_path(path), steps, inputs, width, model.spec.classes)


def describe_interface(trained: TrainedModel, parts: list[int]) -> dict:
    """What a user of the files needs beyond their shapes: the encoding of an image and the state's layout."""
    sequencer = trained.sequencer
    order = sequencer.order
    return {
        "run": str(trained.run.dir),
        "task": sequencer.describe(),
        "input_scale": sequencer.input_scale,
        "pixel_order": None if order is None else order.tolist(),
        "readout": trained.config.model.readout,
        "state": {"cell": parts[:-2], "readout_total": parts[-2], "steps_read": parts[-1]},
        "image": {  # what an image must look like before the encoding above: MNIST's own form
            "side": SIDE,
            "ink": "light on dark: background 0, ink up to 255",
            "box": f"the digit scaled to fit {BOX}x{BOX}, its aspect kept",
            "centre_of_mass": [CENTRE, CENTRE],
            "a photo": "seqmnist.mnistify.to_gray, then mnist_like, do all of it (paper and lighting "
            "subtracted, polarity, contrast, crop, box, centring), as predict and the page do",
        },
    }


def _export_step(step: OneStep, inputs: int, width: int) -> onnx.ModelProto:
    """The step form, by torch.onnx's exporter (torch.export), the batch left free."""
    batch = torch.export.Dim("batch")
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                step.eval(),
                (torch.zeros(2, inputs), torch.zeros(2, width)),
                input_names=["x_t", "state"],
                output_names=["next_state", "probabilities"],
                dynamic_shapes=[{0: batch}, {0: batch}],
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter colours its messages
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise SeqmnistError(f"torch.onnx could not export the {step.model.name} cell: {reason}") from None
    return program.model_proto


def over_sequence(step_model: onnx.ModelProto, width: int) -> onnx.ModelProto:
    """The whole sequence as ONNX's Scan of the step form over x (batch, steps, inputs), from zeros:
    the final probabilities (batch, classes), the belief after every step (batch, steps, classes) and
    the final state. A loop, not the steps unrolled: one small file for any length, 784 steps as 28."""
    body = onnx.GraphProto()
    body.CopyFrom(step_model.graph)
    body.name = "one_step"
    x_t = body.input[0]
    body.input.remove(x_t)  # Scan's body takes the carried state first, then the scanned input
    body.input.append(x_t)
    # a subgraph may not reuse an outer name: the step's probabilities leave the body under another
    body.node.append(onnx.helper.make_node("Identity", ["probabilities"], ["step_probabilities"]))
    body.output[1].name = "step_probabilities"
    inputs = x_t.type.tensor_type.shape.dim[1].dim_value
    classes = body.output[1].type.tensor_type.shape.dim[1].dim_value
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])
    make = onnx.helper.make_node
    nodes = [
        make("Shape", ["x"], ["seq_batch"], start=0, end=1),
        make("Concat", ["seq_batch", "seq_width"], ["seq_state_shape"], axis=0),
        make("ConstantOfShape", ["seq_state_shape"], ["seq_initial_state"], value=zero),
        make("Scan", ["seq_initial_state", "x"], ["final_state", "running"], body=body, num_scan_inputs=1,
             scan_input_axes=[1], scan_output_axes=[1]),
        make("Gather", ["running", "seq_last"], ["probabilities"], axis=1),
    ]  # fmt: skip
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes,
        "seqmnist_sequence",
        [tensor("x", onnx.TensorProto.FLOAT, ["batch", "steps", inputs])],
        [
            tensor("probabilities", onnx.TensorProto.FLOAT, ["batch", classes]),
            tensor("running", onnx.TensorProto.FLOAT, ["batch", "steps", classes]),
            tensor("final_state", onnx.TensorProto.FLOAT, ["batch", width]),
        ],
        initializer=[
            onnx.numpy_helper.from_array(np.array([width], dtype=np.int64), "seq_width"),
            onnx.numpy_helper.from_array(np.array(-1, dtype=np.int64), "seq_last"),
        ],
    )
    return onnx.helper.make_model(graph, opset_imports=step_model.opset_import, ir_version=step_model.ir_version)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings and log lines (torch.export's internals and the graph it failed on,
    torchvision's ops it skips) are notes to PyTorch's developers, not to the user: silenced while it
    runs; a failure is one line of its own (:func:`_export_step`)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_differences(exported: Exported, trained: TrainedModel, images: torch.Tensor) -> dict[str, float]:
    """The largest difference from the PyTorch model's running belief (:meth:`TrainedModel.read`) on
    uint8 images (N, 28, 28), after every step, of each file run by onnxruntime: the whole sequence's
    ``running`` (its last step the probabilities), and the step form run step by step over the sequence."""
    try:
        import onnxruntime
    except ImportError:
        raise SeqmnistError("checking the export needs onnxruntime: pip install 'seqmnist[onnx]'") from None
    expected = trained.read(images)["running"].numpy()  # (steps, N, classes)
    x = trained.sequencer.encode(images).numpy()
    whole = onnxruntime.InferenceSession(str(exported.sequence)).run(["running"], {"x": x})[0]
    stepper = onnxruntime.InferenceSession(str(exported.step))
    state = np.zeros((len(x), exported.state_width), dtype=np.float32)
    largest = 0.0
    for t in range(exported.steps):
        state, probabilities = stepper.run(None, {"x_t": np.ascontiguousarray(x[:, t]), "state": state})
        largest = max(largest, float(np.abs(probabilities - expected[t]).max()))
    return {"sequence": float(np.abs(whole.transpose(1, 0, 2) - expected).max()), "step": largest}
