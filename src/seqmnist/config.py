"""Settings: every knob of a run in one plain dataclass whose defaults are the seed's recipe, and the
presets, named sets of settings that flags on the command line override."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .data import TRAIN_IMAGES
from .errors import SeqmnistError
from .files import read_json
from .model import ModelSpec, check_spec
from .readouts import readout_names
from .recipes import OPTIMIZERS, SCHEDULES
from .registry import cell_names, init_names
from .sequence import PIXELS, SIDE, TASKS, Sequencer, permutation_order

ENGINES = ("fast", "autograd")
DEVICES = ("auto", "cpu", "cuda")
RNGS = ("seed", "torch")


@dataclass
class Config:
    """Every setting of a run; the defaults are the seed's recipe (Keurulainen et al. 2016)."""

    preset: str = "seed"
    # --- the task: how an image becomes a sequence (seqmnist.sequence)
    task: str = "rows"
    rows: int | None = 28  # the rows task reads the first K rows
    pixels_per_step: int | None = None  # None: the task's own (rows: 28, pixel and permuted: 1)
    permutation: str | None = None  # the permuted task's order; None: random:0
    # Pixel intensity = byte / input_scale: the seed read mnist.pkl.gz, which holds byte / 256.
    input_scale: int = 256
    # --- the model (seqmnist.model)
    cell: str = "vanilla"
    hidden: int = 200
    layers: int = 1
    bias: bool = False
    init: str | None = None  # None: the cell's own
    readout: str = "mean-softmax"
    # --- the recipe (seqmnist.recipes)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # of SGD with momentum and Nesterov's
    weight_decay: float = 0.0
    clip: float = 0.0  # the gradient's largest norm (0: not clipped)
    schedule: str = "constant"
    warmup: float = 0.0  # epochs of linear warm-up
    decay_every: int = 10  # epochs between the step schedule's decays
    decay: float = 0.1  # the step schedule's factor
    epochs: int = 100
    batch_size: int = 100
    patience: int = 0  # stop after this many evaluations without a better validation accuracy (0: never)
    seed: int = 12345
    # Where the randomness comes from. "seed": NumPy's legacy stream as the seed's code used it:
    # np.random.seed(seed), the weights drawn U, V, W in that order, then every epoch a permutation
    # applied to the previous epoch's order. "torch": the weights from torch.Generator(seed), and
    # epoch e's order a permutation of the original order drawn from (seed, e) alone.
    rng: str = "seed"
    subset: int | None = None
    # --- how it runs
    engine: str = "fast"
    device: str = "auto"
    eval_every: int = 1  # accuracy on the training and validation sets every N epochs (always after the last)
    eval_train: bool = True  # accuracy on the whole training set too (the seed's; a forward pass over 50,000)

    def validate(self) -> Config:
        """Reject bad settings before any work starts, naming the flag and its valid range."""
        checks = [
            ("--preset", self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
            ("--task", self.task in TASKS, f"one of {', '.join(TASKS)}"),
            ("--rows", self.rows is None or (_is_int(self.rows) and 1 <= self.rows <= SIDE), "an integer in 1..28"),
            (
                "--pixels-per-step",
                self.pixels_per_step is None or (_is_int(self.pixels_per_step) and self.pixels_per_step >= 1),
                "an integer >= 1",
            ),
            ("--input-scale", self.input_scale in (255, 256), "255 or 256"),
            ("--cell", self.cell in cell_names(), f"one of {', '.join(cell_names())}"),
            ("--hidden", _is_int(self.hidden) and 1 <= self.hidden <= 65536, "an integer in 1..65536"),
            ("--layers", _is_int(self.layers) and 1 <= self.layers <= 16, "an integer in 1..16"),
            ("--bias", isinstance(self.bias, bool), "true or false"),
            ("--init", self.init is None or self.init in init_names(), f"one of {', '.join(init_names())}"),
            ("--readout", self.readout in readout_names(), f"one of {', '.join(readout_names())}"),
            ("--optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("--lr", _is_number(self.lr) and 0 < self.lr < math.inf, "a finite number > 0"),
            ("--momentum", _is_number(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("--weight-decay", _is_number(self.weight_decay) and 0 <= self.weight_decay < 1, "a number in [0, 1)"),
            ("--clip", _is_number(self.clip) and 0 <= self.clip < math.inf, "a finite number >= 0"),
            ("--schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("--warmup", _is_number(self.warmup) and 0 <= self.warmup < math.inf, "a number of epochs >= 0"),
            ("--decay-every", _is_int(self.decay_every) and self.decay_every >= 1, "an integer >= 1"),
            ("--decay", _is_number(self.decay) and 0 < self.decay <= 1, "a number in (0, 1]"),
            ("--epochs", _is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("--batch-size", _is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("--patience", _is_int(self.patience) and self.patience >= 0, "an integer >= 0"),
            ("--seed", _is_int(self.seed) and 0 <= self.seed < 2**32, "an integer in 0..2^32-1"),
            ("--rng", self.rng in RNGS, f"one of {', '.join(RNGS)}"),
            (
                "--subset",
                self.subset is None or (_is_int(self.subset) and 1 <= self.subset <= TRAIN_IMAGES),
                f"an integer in 1..{TRAIN_IMAGES} (the training set's size)",
            ),
            ("--engine", self.engine in ENGINES, f"one of {', '.join(ENGINES)}"),
            ("--device", self.device in DEVICES, f"one of {', '.join(DEVICES)}"),
            ("--eval-every", _is_int(self.eval_every) and self.eval_every >= 1, "an integer >= 1"),
            ("--eval-train", isinstance(self.eval_train, bool), "true or false"),
        ]
        for flag, ok, valid in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise SeqmnistError(f"{flag} must be {valid} (got {value!r})")
        self._validate_combinations()
        return self

    def _validate_combinations(self) -> None:
        if self.task == "rows":
            if self.rows is None:
                raise SeqmnistError("the rows task needs --rows (1..28)")
            if self.pixels_per_step not in (None, SIDE):
                raise SeqmnistError("--pixels-per-step is for the pixel and permuted tasks (rows read 28 a step)")
        else:
            if self.rows is not None:
                raise SeqmnistError(f"--rows is for the rows task; the {self.task} task reads all 784 pixels")
            if PIXELS % self.steps_inputs[1]:
                raise SeqmnistError(
                    f"--pixels-per-step must divide 784 (got {self.pixels_per_step}; e.g. 1, 2, 4, 7, 8, 14, 16, 28)"
                )
        if self.permutation is not None:
            if self.task != "permuted":
                raise SeqmnistError(f"--permutation is for the permuted task, not {self.task}")
            permutation_order(self.permutation)
        check_spec(self.model_spec())
        if self.batch_size > self.train_images:
            raise SeqmnistError(
                f"--batch-size {self.batch_size} is larger than the {self.train_images} training images"
            )

    # --- what the settings make -------------------------------------------------------------------

    @property
    def steps_inputs(self) -> tuple[int, int]:
        """Steps per sequence and pixels per step."""
        if self.task == "rows":
            return self.rows, SIDE
        per_step = self.pixels_per_step or 1
        return PIXELS // per_step, per_step

    def sequencer(self) -> Sequencer:
        per_step = self.steps_inputs[1]
        permutation = (self.permutation or "random:0") if self.task == "permuted" else None
        return Sequencer(self.task, self.rows or SIDE, per_step, permutation, self.input_scale)

    def model_spec(self) -> ModelSpec:
        steps, per_step = self.steps_inputs
        return ModelSpec(self.cell, per_step, self.hidden, self.layers, self.bias, self.readout, self.init, steps)

    @property
    def train_images(self) -> int:
        return self.subset or TRAIN_IMAGES

    @property
    def batches(self) -> int:
        """Batches per epoch: whole batches only, as the seed (a last partial batch is left out)."""
        return self.train_images // self.batch_size

    def describe(self) -> str:
        """One line: task, model, recipe."""
        spec = self.model_spec()
        extras = [f"{self.layers} layers" if self.layers > 1 else "", "bias" if self.bias else "no bias"]
        recipe = f"{self.optimizer} lr {self.lr:g}" + (f", {self.schedule}" if self.schedule != "constant" else "")
        return (
            f"{self.sequencer().describe()}; {self.cell} {self.hidden} ({', '.join(e for e in extras if e)}), "
            f"{spec.init_scheme} init, {self.readout}; {recipe}, batch {self.batch_size}, {self.epochs} epochs"
        )

    # --- making one ---------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, preset: str = "seed", **overrides: object) -> Config:
        """The preset's settings, then every override that is not None. A task other than rows reads
        no rows, unless rows are asked for (which is then an error)."""
        if preset not in PRESETS:
            raise SeqmnistError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
        settings = {**PRESETS[preset].settings, "preset": preset}
        given = {k: v for k, v in overrides.items() if v is not None}
        names = {f.name for f in fields(cls)}
        if not set(given) <= names:
            raise SeqmnistError(f"unknown settings: {', '.join(sorted(set(given) - names))}")
        settings.update(given)
        if settings.get("task", "rows") != "rows" and "rows" not in given:
            settings["rows"] = None
        return cls(**settings).validate()

    @classmethod
    def from_file(cls, path: Path) -> Config:
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise SeqmnistError(f"{path}: not a seqmnist run configuration")
        try:
            return cls(**data).validate()
        except (SeqmnistError, TypeError) as exc:
            raise SeqmnistError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class Preset:
    """A named set of settings, what it is for, and what to expect from it."""

    settings: dict
    about: str


# Beyond the seed: PyTorch's usual input scale and random streams, biases, Adam.
_MODERN = {"input_scale": 255, "rng": "torch", "bias": True, "optimizer": "adam", "eval_train": False}
# The recipe the beyond presets share: the final state's readout, a warm-up into a cosine, clipping.
_RECIPE = {**_MODERN, "readout": "last", "schedule": "cosine", "warmup": 1.0, "clip": 1.0}
_GATED = {**_RECIPE, "cell": "lstm", "hidden": 192, "optimizer": "adamw", "weight_decay": 0.05, "lr": 2e-3}
_PIXEL = {**_RECIPE, "task": "pixel", "cell": "indrnn", "hidden": 128, "layers": 2, "lr": 5e-4, "epochs": 6}

PRESETS: dict[str, Preset] = {
    "seed": Preset({}, "the 2016 recipe, replayed number for number: 100 epochs of plain SGD, ~96% (10-17 min)"),
    "quick": Preset(
        {**_MODERN, "hidden": 128, "readout": "last", "lr": 0.003, "epochs": 2, "schedule": "cosine"},
        "a first look: 2 epochs of a vanilla RNN with Adam, ~94% in well under a minute",
    ),
    "rows-vanilla": Preset(
        {**_RECIPE, "cell": "vanilla", "hidden": 256, "layers": 2, "lr": 1e-3, "epochs": 25},
        "rows: two tanh layers of 256, no gates",
    ),
    "rows-irnn": Preset(
        {**_RECIPE, "cell": "irnn", "hidden": 256, "lr": 5e-4, "epochs": 40},
        "rows: an IRNN of 256 (Le et al. 2015)",
    ),
    "rows-lstm": Preset({**_GATED, "epochs": 20}, "rows: an LSTM of 192"),
    "rows-gru": Preset({**_GATED, "cell": "gru", "epochs": 20}, "rows: a GRU of 192"),
    "pixel16-lstm": Preset(
        {**_GATED, "task": "pixel", "pixels_per_step": 16, "epochs": 16},
        "16 pixels a step (49 steps): an LSTM of 192",
    ),
    "pixel-indrnn": Preset(
        _PIXEL,
        "pixel by pixel (784 steps): two IndRNN layers of 128 (Li et al. 2018), 6 epochs: a CPU's budget, "
        "more epochs (--epochs) go further",
    ),
    "permuted-indrnn": Preset(
        {**_PIXEL, "task": "permuted", "permutation": "bitrev"},
        "permuted pixel by pixel (784 steps, bit-reversal order): as pixel-indrnn",
    ),
}
