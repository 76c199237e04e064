"""The seed: its published numbers, and its trained model files.

``reference/`` holds what the authors' training logs recorded (cited in its
README). ``read_theano_model`` reads one of the model files the seed's code
wrote (``rnn_stepK.model``: three Python 2 pickles of float32 arrays) without
ever running code from it: a pickle names functions that loading it calls, and
only the three NumPy reconstructors an array needs are admitted.
"""

from __future__ import annotations

import csv
import io
import pickle
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from .config import Config
from .errors import SeqmnistError

SWEEP_ROWS = tuple(range(2, 29, 2))
CONFUSION_ROWS = (2, 6, 10, 14, 20, 28)


@cache
def _reference_rows(name: str) -> tuple[dict, ...]:
    text = resources.files("seqmnist").joinpath("reference", name).read_text()
    return tuple(csv.DictReader(text.splitlines()))


def seed_sweep() -> dict[int, dict[str, float]]:
    return {
        int(r["n_steps"]): {
            "train_acc": float(r["final_train_acc"]),
            "val_acc": float(r["final_val_acc"]),
            "test_acc": float(r["test_acc"]),
        }
        for r in _reference_rows("rows_sweep.csv")
    }


def seed_curves(rows: int) -> list[dict]:
    """The seed's logged accuracy after every epoch (as its code measured) for K rows; [] if none."""
    return [
        {"epoch": int(r["epoch"]), "train_acc": float(r["train_acc"]), "val_acc": float(r["val_acc"])}
        for r in _reference_rows("epoch_curves.csv")
        if int(r["n_steps"]) == rows
    ]


def seed_confusion(rows: int) -> np.ndarray:
    matrix = [
        [int(r[f"pred_{d}"]) for d in range(10)]
        for r in _reference_rows("confusion_matrices.csv")
        if int(r["n_steps"]) == rows
    ]
    return np.array(matrix)


def is_seed_recipe(config: Config) -> bool:
    """Whether a run follows the seed's recipe (any rows, epochs, evaluation interval, engine or
    device), so that the seed's logs are its yardstick."""
    neutral = {"rows": 28, "epochs": 100, "eval_every": 1, "engine": "fast", "device": "auto", "preset": "seed"}
    return replace(config, **neutral) == Config()


def seed_log(config: Config) -> dict[int, dict]:
    """The seed's logged accuracies by epoch for this run, when it follows the seed's recipe; else {}."""
    if not is_seed_recipe(config):
        return {}
    return {r["epoch"]: r for r in seed_curves(config.rows)}


# --- the seed's model files -------------------------------------------------------------------

# What a pickled NumPy array needs to be rebuilt, and nothing else (NumPy 2 names its module numpy._core).
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes an array's bytes at protocol 2; admitted for latin-1 only
}
THEANO_ARRAYS = ("U", "V", "W")  # the order layer_rnn.dump_model wrote them in


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ADMITTED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is not part of a NumPy array")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, wherever this NumPy keeps it
        if name == "encode":
            return _latin1_bytes
        return getattr(np, name)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"it asks to encode with {encoding!r}")
    return text.encode("latin1")


def read_theano_model(path: Path, inputs: int = 28, classes: int = 10) -> dict[str, np.ndarray]:
    """U (inputs x H), V (H x classes), W (H x H), float32, from a model file of the seed's code."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SeqmnistError(f"{path}: cannot read ({exc.strerror or exc})") from None
    stream = io.BytesIO(raw)
    arrays = {}
    try:
        for name in THEANO_ARRAYS:
            arrays[name] = _ArraysOnly(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise SeqmnistError(f"{path}: not a model file of the seed's code ({exc or type(exc).__name__})") from None
    if stream.read(1):
        raise SeqmnistError(f"{path}: not a model file of the seed's code (data after its three arrays)")
    hidden = arrays["W"].shape[0] if isinstance(arrays["W"], np.ndarray) and arrays["W"].ndim == 2 else None
    shapes = {"U": (inputs, hidden), "V": (hidden, classes), "W": (hidden, hidden)}
    for name, shape in shapes.items():
        array = arrays[name]
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != shape or hidden is None:
            what = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
            raise SeqmnistError(f"{path}: array {name} is {what}, expected float32 {shape}")
        if not np.isfinite(array).all():
            raise SeqmnistError(f"{path}: array {name} holds NaN or infinite values")
    return arrays
