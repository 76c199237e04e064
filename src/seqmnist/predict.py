"""A trained model on anyone's images of digits: each read safely (:mod:`seqmnist.images`), made to
look like MNIST (:mod:`seqmnist.mnistify`), and read by the model step by step; the answers as JSON
(``seqmnist predict --json``, the web app's API), as lines for a person, and as figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import SeqmnistError
from .images import ImageRejected, decode_image, picture, read_image_file
from .mnistify import mnist_like, to_gray
from .runs import TrainedModel
from .sequence import SIDE

DECIMALS = 6  # of the probabilities in the JSON


# --- an image to the model's input ----------------------------------------------------------------


def prepare(data: bytes) -> np.ndarray:
    """Image bytes (a file or an upload) to the model's 28x28 uint8 input, or ImageRejected."""
    return mnist_like(to_gray(decode_image(data)))


def prepare_file(path: Path) -> np.ndarray:
    """An image file to the model's input; every problem is one line naming the file."""
    try:
        return prepare(read_image_file(path))
    except ImageRejected as exc:
        message = str(exc)
        raise ImageRejected(message if message.startswith(f"{path}:") else f"{path}: {message}", exc.status) from None


# --- what the model makes of it -------------------------------------------------------------------


def step_unit(trained: TrainedModel) -> str:
    """What one step reads: a row on the rows task, else a group of pixels."""
    return "row" if trained.config.task.task == "rows" else "step"


def predict_inputs(trained: TrainedModel, inputs: list[np.ndarray], names: list[str], chunk: int = 256) -> list[dict]:
    """The JSON result for each 28x28 uint8 input: label, probabilities, and the trace of every step."""
    results = []
    for start in range(0, len(inputs), chunk):
        images = torch.from_numpy(np.stack(inputs[start : start + chunk]))
        out = trained.read(images)
        for i in range(len(images)):
            results.append(_result(trained, out, i, names[start + i], inputs[start + i]))
    return results


def first_inked_step(trained: TrainedModel, image: np.ndarray) -> int | None:
    """The first step that reads any ink (1-based), or None when every step read is blank. Before it the
    model has seen only background, so its belief there is the same for every image: a prior, not a
    reading of this digit."""
    x = trained.sequencer.encode(torch.from_numpy(image)[None])[0]
    inked = torch.nonzero(x.amax(dim=1) > 0)
    return int(inked[0]) + 1 if len(inked) else None


def _result(trained: TrainedModel, out: dict[str, torch.Tensor], i: int, name: str, image: np.ndarray) -> dict:
    step_probs = out["step_probs"][:, i].numpy()  # float64: TrainedModel.read's readout
    running = out["running"][:, i].numpy()
    running_labels = running.argmax(axis=1)
    label = int(out["labels"][i])
    trace = [
        {
            "step": t + 1,
            "probabilities": _rounded(step_probs[t]),
            "running": _rounded(running[t]),
            "prediction": int(running_labels[t]),
        }
        for t in range(len(running))
    ]
    return {
        "file": name,
        "label": label,
        "probabilities": _rounded(out["probabilities"][i].numpy()),
        "steps": len(trace),
        "step_unit": step_unit(trained),
        "settled": settled_step(running_labels, label),
        "first_inked_step": first_inked_step(trained, image),
        "trace": trace,
        "input": image.tolist(),
    }


def settled_step(running_labels: np.ndarray, label: int) -> int:
    """The first step from which the running prediction stays the final label to the end."""
    differs = np.nonzero(running_labels != label)[0]
    return int(differs[-1]) + 2 if len(differs) else 1


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


def predict_files(trained: TrainedModel, paths: list[Path], save_input: Path | None = None) -> list[dict]:
    """``seqmnist predict``: every image read and checked, then the model on all the readable ones at
    once. One result per path, in order: the prediction, or ``{"file": ..., "error": "one line"}`` for a
    file that could not be used, so one bad file among many costs only its own answer."""
    readable: dict[int, np.ndarray] = {}
    errors: dict[int, dict] = {}
    for i, path in enumerate(paths):
        try:
            readable[i] = prepare_file(Path(path))
        except ImageRejected as exc:
            errors[i] = {"file": str(path), "error": str(exc)}
    names = [str(paths[i]) for i in readable]
    inputs = list(readable.values())
    if save_input is not None and inputs:
        save_inputs(save_input, names, inputs)
    predicted = dict(zip(readable, predict_inputs(trained, inputs, names), strict=True)) if inputs else {}
    return [predicted.get(i) or errors[i] for i in range(len(paths))]


def describe_result(result: dict, top: int = 3) -> str:
    """Two lines for a person: the label, the ``top`` most likely digits, and how the running prediction
    went from the first inked step on (``rows 1-4 blank, then 0 (rows 5-6), 1 (rows 7-12), 7 (rows
    13-28)``). The guesses over blank rows are left out: they are the same for every image."""
    probabilities = result["probabilities"]
    ranked = sorted(range(len(probabilities)), key=lambda d: -probabilities[d])[:top]
    classes = ", ".join(f"{d} {probabilities[d]:.1%}" for d in ranked)
    unit, first = result["step_unit"], result["first_inked_step"]
    if first is None:
        course = f"{_span_words(unit, 1, result['steps'])} blank: the digit lies beyond what this model reads"
    else:
        runs: list[list[int]] = []
        for t, step in enumerate(result["trace"][first - 1 :], start=first):
            if runs and runs[-1][0] == step["prediction"]:
                runs[-1][2] = t
            else:
                runs.append([step["prediction"], t, t])
        course = ", ".join(f"{d} ({_span_words(unit, a, b)})" for d, a, b in runs)
        if first > 1:
            course = f"{_span_words(unit, 1, first - 1)} blank, then {course}"
    return f"{result['file']}: {result['label']}  ({classes})\n  running prediction: {course}"


def _span_words(unit: str, first: int, last: int) -> str:
    return f"{unit}s {first}-{last}" if first != last else f"{unit} {first}"


def save_inputs(directory: Path, names: list[str], inputs: list[np.ndarray]) -> list[Path]:
    """The 28x28 inputs as PNGs named after their images (``digit.png`` -> ``DIR/digit.png``; a name
    that repeats gets ``-2``, ``-3``)."""
    paths = png_paths(directory, names)
    for path, image in zip(paths, inputs, strict=True):
        Image.fromarray(image, "L").save(path)
    return paths


def png_paths(directory: Path, names: list[str], prefix: str = "") -> list[Path]:
    """A PNG path in ``directory`` (created) for each image name, never two alike: ``a/seven.png`` and
    ``b/seven.jpg`` become ``seven.png`` and ``seven-2.png``."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeqmnistError(f"{directory}: cannot create the directory ({exc.strerror or exc})") from None
    taken: set[str] = set()
    paths = []
    for name in names:
        stem = prefix + (Path(name).stem or "image")
        candidate, n = stem, 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate)
        paths.append(directory / f"{candidate}.png")
    return paths


def draw_readings(trained: TrainedModel, results: list[dict], directory: Path, prefix: str = "") -> list[Path]:
    """A figure of the model reading each image (see :func:`seqmnist.plots.reading`), one PNG per
    result that has a prediction, named after its file."""
    from . import plots

    done = [r for r in results if "error" not in r]
    paths = png_paths(directory, [r["file"] for r in done], prefix)
    config = trained.config
    for result, path in zip(done, paths, strict=True):
        running = np.array([step["running"] for step in result["trace"]])
        plots.reading(
            picture(Path(result["file"])),
            np.array(result["input"], dtype=np.uint8),
            running,
            path,
            unit=result["step_unit"],
            rows_read=config.task.rows if config.task.task == "rows" and config.task.rows != SIDE else None,
            first_inked=result["first_inked_step"],
            title=f"{Path(result['file']).name} read by {trained.run.dir.name} ({config.describe()})",
        )
    return paths
