"""The seed: its published numbers, how its code measured accuracy, and its trained model files.

``reference/`` holds what the authors' training logs recorded (cited in its
README). The seed's measure of accuracy registers itself with :mod:`seqmnist.measures`
(the package imports this module), so every run with the seed's readout records it
and a run of the seed's recipe prints the seed's log beside its own, while the
training loop never names the seed.

``read_theano_model`` reads one of the model files the seed's code wrote
(``rnn_stepK.model``: three Python 2 pickles of float32 arrays) without ever
running code from it: a pickle names functions that loading it calls, and only
the three NumPy reconstructors an array needs are admitted; ``import_theano``
makes a run directory of one, which evaluate, plot, predict and serve take like any.

Where the fourteen model files (K = 2, 4, ..., 28) come from, as MNIST's files:
  1. an explicit directory (``--seed-models``),
  2. the environment variable ``SEQMNIST_SEED_MODELS``,
  3. a per-user cache (``$XDG_CACHE_HOME/seqmnist/seed-models``), downloaded on
     first use from the authors' repository at a pinned commit.
Wherever one comes from, it must have the SHA-256 of the published file.
"""

from __future__ import annotations

import csv
import io
import math
import pickle
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .cells import VanillaRNN
from .config import NEUTRAL, SETTINGS, Config
from .data import MNIST
from .errors import Log, SeqmnistError
from .evaluation import evaluate, evaluate_run
from .files import DOWNLOAD_TIMEOUT, check_digest, choose_dir, download, file_digest, write_json
from .measures import Measure, register
from .readouts import get_readout
from .runs import new_run

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
    """Whether a run follows the seed's recipe (any rows, epochs and evaluation interval, which its logs
    cover, and any setting that does not change what is learnt), so that the seed's logs are its yardstick."""
    free = {name: SETTINGS[name].default for name in ("rows", "epochs", "eval_every", *NEUTRAL)}
    return config.replace(preset="seed", **free) == Config()


def seed_log(config: Config) -> dict[int, dict]:
    """The seed's logged accuracies by epoch for this run, when it follows the seed's recipe; else {}."""
    if not is_seed_recipe(config):
        return {}
    return {r["epoch"]: r for r in seed_curves(config.task.rows)}


# --- how the seed's code measured accuracy -------------------------------------------------------


def seed_code_readout(step_probs: torch.Tensor) -> torch.Tensor:
    """The readout the seed's code *measured accuracy with*: the last row's softmax replaced by a uniform one.

    The seed's Theano accuracy function (``layer.py`` in github.com/juliuswang0728/rnn_theano)
    lists the state variable among its inputs and is called with zeros for it,
    meant as the initial state. But by then that variable names the state after the
    last row, so Theano substitutes the zeros there: the last row's softmax becomes
    softmax(0) = 1/10 for every digit and the prediction rests on the other rows.
    Training and the confusion matrices used the full readout. This explains the
    seed's numbers: its K = 28 confusion matrix has 96.41% on its diagonal but its
    reported test accuracy is 96.07%, and at K = 2 (the first row is blank in
    almost every image, so the softmaxes tie and argmax says 0) it reports the share
    of zeros in each set, to within one image. ``step_probs`` is (rows, batch, classes).
    """
    uniform = torch.full_like(step_probs[0], 1.0 / step_probs.shape[-1])
    return (step_probs[:-1].sum(0) + uniform) / step_probs.shape[0]


def _epoch_note(row: dict, logged: dict | None) -> str:
    """An epoch's accuracies as the seed's code measured them, the seed's log for that epoch beside
    them, then the words that introduce the model's own (every row read)."""
    if math.isnan(row["train_acc_as_seed"]):
        return ""
    note = f"train {row['train_acc_as_seed']:.4f}  val {row['val_acc_as_seed']:.4f} as the seed's code measured"
    if logged:
        note += f" (seed's log: {logged['train_acc']:.4f}  {logged['val_acc']:.4f})"
    return note + "; every row read: "


SEED_MEASURE = register(
    Measure(
        name="as_seed",
        label="as the seed's code measured",
        # It changes one of the softmaxes the seed's readout averages; other readouts have no such measure.
        applies=lambda config: get_readout(config.model.readout).averages_softmaxes,
        scores=seed_code_readout,
        epoch_note=_epoch_note,
        reference=seed_log,
    )
)


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


# --- where the seed's model files come from ------------------------------------------------------

SEED_MODELS_ENV = "SEQMNIST_SEED_MODELS"
SEED_MODELS_CACHE = "seed-models"
# The newest commit of github.com/juliuswang0728/rnn_theano (master, 2016-10-20), which holds all fourteen.
SEED_COMMIT = "8676feaca8775da521153cd7bdc2aebd9e4d7d8c"
SEED_MODELS_URL = f"https://raw.githubusercontent.com/juliuswang0728/rnn_theano/{SEED_COMMIT}/model/"
SEED_MODEL_SHA256 = {
    2: "cad7866698d6bddccded90580a1cdae3cef1f7542623253c0c78758437d055dc",
    4: "9be347744e5794c1a919e8e7d26a01bb2929af3f34f1966a73eb3397e410cb77",
    6: "1cf28b62aca62deb7adb511934c6154ae8bf7292c8c64907545690b2744b32a8",
    8: "8eedb109c6e7294e5e7b265e77370f2d3008d31a73efb2857f7c34884c7e1cf5",
    10: "81bfe826c8548bc62e76cd540c9ff7a99de7a72910b2b4236dc9a9a9b8b31dae",
    12: "d197bc2419f32da8bb7e5359ccbe05c95dfe167449281ea2d9e7146b47a06d15",
    14: "898c38eb212d28be8ab730abd97c6b886097401ae63a874fec7067013f937b96",
    16: "82508b16cc41ca9a8293dcfebaef9904af1179a7109418c114c3d48996385cd3",
    18: "baa7b14050180c616d9743e517e7bb6cdb1e5d97209726161a1183d31ef9e563",
    20: "fe75e0794de6c20e58a1b6c73a91fdd945e13de38a5c864fb22c49d0047aa98d",
    22: "587b8178f8d665b8f8488b861689f148f3d2d0c07200b937d32eb61af8ac470f",
    24: "31e4fe8117c66b139d7dbb31963084e044dacdc3ebb343eea6fb5cda28db8f7d",
    26: "063d6fae9cd19584bdf62aca9839c3b131873dd1bf52ce6c1a618c2c12bfe5c5",
    28: "d3f8918ab46b0de334451c491ead0ad7954c01a23699dfb4d678ef33b937fadd",
}
SEED_MODELS_ADVICE = (
    f"with no network, point --seed-models or {SEED_MODELS_ENV} at a directory holding the seed's rnn_stepK.model files"
)


def seed_model_name(rows: int) -> str:
    """The seed's file name for the model that reads ``rows`` rows; only the fourteen it published."""
    if rows not in SEED_MODEL_SHA256:
        raise SeqmnistError(f"the seed published models for K = 2, 4, ..., 28 rows only (got --rows {rows})")
    return f"rnn_step{rows}.model"


def seed_models_dir(given: str | Path | None = None) -> tuple[Path, bool]:
    """The directory the seed's models are read from; the flag is true when it is the download cache."""
    return choose_dir(given, "--seed-models", SEED_MODELS_ENV, SEED_MODELS_CACHE)


def check_seed_model(path: Path, rows: int) -> Path:
    """Insist that ``path`` is the seed's published model for ``rows`` (a file under its name may be another)."""
    try:
        check_digest(path, "sha256", SEED_MODEL_SHA256[rows])
    except SeqmnistError as exc:
        raise SeqmnistError(f"{path}: {exc}: not the seed's published {seed_model_name(rows)}") from None
    return path


def download_seed_model(
    rows: int, directory: Path, base_url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT
) -> Path:
    """Fetch the seed's model for ``rows`` from its pinned commit into ``directory``, verified."""
    name = seed_model_name(rows)
    url = (base_url or SEED_MODELS_URL) + name
    return download([url], directory / name, "sha256", SEED_MODEL_SHA256[rows], SEED_MODELS_ADVICE, timeout)


def find_seed_model(
    rows: int, given: str | Path | None = None, base_url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT
) -> Path:
    """The seed's verified model file for ``rows``: from ``given``, else $SEQMNIST_SEED_MODELS, else
    the cache, downloading it there on first use."""
    name = seed_model_name(rows)
    directory, is_cache = seed_models_dir(given)
    path = directory / name
    if path.is_file():
        return check_seed_model(path, rows)
    if not is_cache:
        raise SeqmnistError(
            f"{path}: missing; copy the seed's {name} there, or drop --seed-models and unset {SEED_MODELS_ENV} "
            "to download it"
        )
    return download_seed_model(rows, directory, base_url, timeout)


def available_seed_models(given: str | Path | None, log: Log) -> dict[int, Path]:
    """The seed's verified model files by K (what ``reproduce`` evaluates), from ``given``,
    $SEQMNIST_SEED_MODELS or the cache (downloading what it lacks). A directory named by the user
    must hold at least one; the cache, offline, may hold none (a report without that section beats
    no report), and the first failed download ends the downloads (one timeout, not fourteen)."""
    directory, is_cache = seed_models_dir(given)
    found, offline = {}, None
    for k in SWEEP_ROWS:
        path = directory / seed_model_name(k)
        if path.is_file():
            found[k] = check_seed_model(path, k)
        elif is_cache and offline is None:
            try:
                found[k] = download_seed_model(k, directory)
            except SeqmnistError as exc:
                offline = exc
    if not found and not is_cache:
        raise SeqmnistError(f"{directory}: holds no rnn_stepK.model file of the seed's code")
    missing = [k for k in SWEEP_ROWS if k not in found]
    if missing:
        log(
            f"the seed's models: {len(found)} of {len(SWEEP_ROWS)} in {directory}, missing K = "
            + ", ".join(map(str, missing))
            + (f" ({offline})" if offline else "")
        )
    return found


# --- a model file of the seed's code, imported and evaluated --------------------------------------


def theano_model(path: Path) -> VanillaRNN:
    """The model a file of the seed's code holds, as ours."""
    arrays = read_theano_model(path)
    model = VanillaRNN(arrays["W"].shape[0])
    model.load_state_dict({name: torch.from_numpy(a) for name, a in arrays.items()})
    return model


def import_theano(path: Path, rows: int, out: Path, data_dir: str | None = None) -> dict:
    """A run directory holding a model file of the seed's code: config.json (the seed's recipe for
    ``rows``), model.safetensors, import.json (where it came from) and summary.json (its test)."""
    config = Config.from_settings("seed", rows=rows)
    model = theano_model(path)
    config = config.replace(hidden=model.hidden_size).validate()
    run = new_run(out)
    data = MNIST.load(data_dir)
    digest = file_digest(path, "sha256")
    write_json(run.config, config.to_dict())
    write_json(run.dir / "import.json", {"file": str(path.resolve()), "sha256": digest, "format": "rnn_theano"})
    run.save_model(model)
    summary = {"epochs": config.recipe.epochs, **evaluate_run(run, config, data), "imported_from": str(path.resolve())}
    run.write_summary(summary)
    return summary


def evaluate_seed_models(files: dict[int, Path], data: MNIST) -> dict[int, dict]:
    """The seed's model files by K, each evaluated on the test set."""
    found = {}
    for k, path in files.items():
        config = Config.from_settings("seed", rows=k)
        x = config.task.sequencer().encode(data.test_x)
        found[k] = {"file": path.name, **evaluate(theano_model(path), x, data.test_y, config)}
    return found
