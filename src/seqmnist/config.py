"""Settings: every knob of a run, in four groups (the task, the model, the recipe, how it runs), each
declared once with its default (the seed's recipe), the values it takes and its help; and the presets,
named partial settings that flags on the command line override.

A setting has one flat name across the groups (``lr``, ``cell``): the flag (``--lr``), the key in a
grid file and the keyword of ``Config.from_settings`` all use it, so a user never needs the groups."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Collection, Hashable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .data import TRAIN_IMAGES
from .errors import SeqmnistError
from .files import read_json
from .model import CELL_OPTIONS, INIT_ABOUT, LAST_LAYER_INITS, NORMS, ModelSpec, check_spec
from .readouts import readout_names
from .recipes import CLIP_MODES, OPTIMIZERS, SCHEDULES
from .registry import cell_names, get_cell, init_names
from .sequence import PIXELS, SIDE, TASKS, Sequencer, permutation_order

COMPUTES = ("fast", "definition")
DEVICES = ("auto", "cpu", "cuda")
RNGS = ("numpy", "torch")


# --- what a setting takes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """The values a setting takes: the test, the words an error names them by, and how the command line
    reads one. ``choices`` is kept live (a registry's own mapping), so a name registered later counts."""

    test: Callable[[object], bool]
    words: str | None = None  # None: "one of" the choices
    parse: type = str
    choices: Collection | None = None
    closed: bool = True  # False: the choices are those listed and more (a cell from a module: get_cell checks)

    def describe(self) -> str:
        return self.words or f"one of {', '.join(map(str, self.choices))}"


def integer(low: int, high: int | None = None, words: str | None = None) -> Valid:
    span = f"in {low}..{high}" if high is not None else f">= {low}"
    return Valid(lambda v: _is_int(v) and low <= v and (high is None or v <= high), words or f"an integer {span}", int)


def number(test: Callable[[float], bool], words: str) -> Valid:
    return Valid(lambda v: _is_number(v) and test(v), words, float)


class Registered(Collection):
    """The names a registry holds now (cells, readouts): a cell registered after this module loads counts."""

    def __init__(self, names: Callable[[], tuple[str, ...]], about: Callable[[str], str] | None = None):
        self.names, self.about = names, about

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def one_of(choices: Collection, words: str | None = None) -> Valid:
    parse = type(next(iter(choices)))
    return Valid(lambda v: isinstance(v, Hashable) and v in choices, words, parse, choices)


BOOLEAN = Valid(lambda v: isinstance(v, bool), "true or false", bool)
FOLDER = Valid(lambda v: isinstance(v, str) and v.strip() != "", "a folder's path")
PERMUTATION_NAME = Valid(lambda v: isinstance(v, str), "random:SEED or bitrev")  # the rest: permutation_order


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def setting(
    default: object,
    valid: Valid,
    about: str,
    shown: str | None = None,
    metavar: str | None = None,
    optional: bool = False,
    added: bool = False,
    effect: str = "learns",
) -> Any:
    """A field of a settings group: its default, the values it takes and its help. ``shown`` is the default
    in the help's words where its value alone says too little; ``optional``: None is valid too (it is
    whenever the default is None); ``added``: a setting that came after runs were first named.
    ``effect`` is what the setting changes: "learns", what the run learns; "computes",
    only how it is computed (the same result but for float rounding); "records", only where its records
    go. A run's name (:meth:`Config.identity`) leaves out "records" settings; a resumed run, and the seed's
    logs as a yardstick, take any setting that does not change what is learnt."""
    declared = {
        "valid": valid,
        "about": about,
        "shown": shown,
        "metavar": metavar,
        "optional": optional,
        "added": added,
        "effect": effect,
    }
    return field(default=default, metadata=declared)


@dataclass(frozen=True)
class Setting:
    """One setting as the command line, the checks and the flat names see it."""

    name: str
    group: str
    default: object
    valid: Valid
    about: str
    shown: str | None
    metavar: str | None
    optional: bool
    added: bool
    effect: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        """The help line, with the default (the seed's recipe) and each registered name's own line, where it has one."""
        choices = self.valid.choices
        listed = "".join(f"; {n}: {choices.about(n)}" for n in choices) if getattr(choices, "about", None) else ""
        return f"{self.about} (default: {self.shown_default}){listed}"

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "yes" if self.default else "no"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def accepts(self, value: object) -> bool:
        """A valid value, or None (unset) where the setting may be unset."""
        return (value is None and (self.optional or self.default is None)) or self.valid.test(value)


# --- the groups -------------------------------------------------------------------------------------


class Group:
    """What a settings group has besides its fields: a title for the command line's help, and a check of
    settings valid alone but not together."""

    title: ClassVar[str]

    def check_combinations(self) -> None:
        """None by default."""


@dataclass
class TaskSettings(Group):
    """How an image becomes a sequence (seqmnist.sequence)."""

    title: ClassVar[str] = "the task (how an image becomes a sequence)"
    task: str = setting(
        "rows",
        one_of(TASKS),
        "rows (28 pixels a step), pixel (sequential MNIST), permuted (pixels in a fixed permuted order)",
    )
    # None outside the rows task, which reads every pixel
    rows: int | None = setting(28, integer(1, SIDE), "rows task: the first K rows are read, 1..28", optional=True)
    pixels_per_step: int | None = setting(
        None, integer(1), "pixel tasks: P pixels a step, a divisor of 784", "1, 784 steps", metavar="P"
    )
    permutation: str | None = setting(
        None,
        PERMUTATION_NAME,
        "permuted task: random:SEED or bitrev (the bit-reversal order S4 calls pMNIST)",
        "random:0",
        metavar="NAME",
    )
    input_scale: int = setting(
        256, one_of((255, 256), "255 or 256"), "pixel = byte / this (256 as the seed's mnist.pkl.gz, 255 elsewhere)"
    )

    def check_combinations(self) -> None:
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


@dataclass
class ModelSettings(Group):
    """The network (seqmnist.model)."""

    title: ClassVar[str] = "the model"
    cell: str = setting(
        "vanilla",
        Valid(
            lambda v: isinstance(v, str) and v != "",
            "a registered cell's name, or module.path:ClassName",
            choices=Registered(cell_names, lambda name: get_cell(name).about),
            closed=False,
        ),
        "the recurrent cell: a registered one, or module.path:ClassName for a cell of your own (docs/cells.md)",
        "vanilla, tanh",
    )
    hidden: int = setting(200, integer(1, 65536), "hidden units per layer")
    layers: int = setting(1, integer(1, 16), "stacked recurrent layers")
    bias: bool = setting(False, BOOLEAN, "biases in the cells and readout")
    init: str | None = setting(
        None,
        one_of(Registered(init_names)),
        "initial weights: " + "; ".join(f"{name}: {about}" for name, about in INIT_ABOUT.items()),
        "the cell's own; irnn: identity",
    )
    readout: str = setting(
        "mean-softmax",
        one_of(Registered(readout_names)),
        "how the per-step outputs make one prediction: mean-softmax, mean-logits, last (the final state's)",
    )
    norm: str = setting(
        "none", one_of(NORMS), "indrnn: batch: batch norm over (batch, steps) after every layer", added=True
    )
    dropout: float = setting(
        0.0,
        number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "indrnn, lru, s4d: dropout in training after every layer, one mask for all steps of a sequence",
        added=True,
    )
    recurrent_max: float = setting(
        2.0,
        number(lambda v: 1 <= v < math.inf, "a finite number >= 1"),
        "indrnn: M in |w| <= M^(1/steps), the most a state may grow over the sequence (Li et al.: 2 to 10)",
        added=True,
    )
    last_layer_init: str = setting(
        "same",
        one_of(LAST_LAYER_INITS),
        "indrnn: near-one: the top layer's w in [M^(-1/steps), M^(1/steps)], so it remembers the whole sequence",
        added=True,
    )
    state: int | None = setting(
        None,
        integer(2, 1024),
        "the state size N of each layer of the cells with one apart from --hidden (s4d: even)",
        "none; lru, s4d: 64",
        metavar="N",
        added=True,
    )


@dataclass
class RecipeSettings(Group):
    """How the weights are learnt (seqmnist.recipes), and from what randomness."""

    title: ClassVar[str] = "the recipe"
    optimizer: str = setting("sgd", one_of(OPTIMIZERS), "how a step follows the gradient")
    lr: float = setting(0.01, number(lambda v: 0 < v < math.inf, "a finite number > 0"), "learning rate")
    momentum: float = setting(0.9, number(lambda v: 0 <= v < 1, "a number in [0, 1)"), "of momentum and nesterov")
    weight_decay: float = setting(
        0.0, number(lambda v: 0 <= v < 1, "a number in [0, 1)"), "L2 penalty; decoupled with adamw"
    )
    clip: float = setting(
        0.0, number(lambda v: 0 <= v < math.inf, "a finite number >= 0"), "clip the gradient's norm to this (0: off)"
    )
    clip_mode: str = setting(
        "norm",
        one_of(CLIP_MODES),
        "norm: scale the whole gradient to norm --clip; value: clamp each element to +-clip (IndRNN's)",
        added=True,
    )
    schedule: str = setting(
        "constant",
        one_of(SCHEDULES),
        "learning rate over the run; plateau: times --decay after --plateau-patience evaluations without a "
        "better validation accuracy",
    )
    recurrent_lr: float = setting(
        1.0,
        number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "the recurrent weights' learning rate as a share of --lr (S4's recipe: 0.1 for A and dt)",
        added=True,
    )
    decay_recurrent: bool = setting(
        True, BOOLEAN, "weight decay on the recurrent weights too (IndRNN's and S4's recipes: no)", added=True
    )
    decay_biases: bool = setting(
        True, BOOLEAN, "weight decay on biases and batch norm's weights too (IndRNN's recipe: no)", added=True
    )
    warmup: float = setting(
        0.0,
        number(lambda v: 0 <= v < math.inf, "a number of epochs >= 0"),
        "epochs of linear warm-up, at most a quarter of --epochs",
    )
    decay_every: int = setting(10, integer(1), "step schedule: epochs between decays")
    decay: float = setting(
        0.1, number(lambda v: 0 < v <= 1, "a number in (0, 1]"), "step and plateau schedules: the factor"
    )
    plateau_patience: int = setting(
        1, integer(1), "plateau schedule: evaluations without a better validation accuracy before a cut", added=True
    )
    epochs: int = setting(100, integer(1), "passes over the training set")
    batch_size: int = setting(100, integer(1), "images per step")
    patience: int = setting(0, integer(0), "stop after N evaluations without a better validation accuracy (0: never)")
    seed: int = setting(
        12345, integer(0, 2**32 - 1, "an integer in 0..2^32-1"), "seed of the initial weights and the shuffles"
    )
    # "numpy": NumPy's legacy stream as the 2016 code used it: np.random.seed(seed), the weights drawn
    # U, V, W in that order, then every epoch a permutation applied to the previous epoch's order.
    # "torch": the weights from torch.Generator(seed), and epoch e's order a permutation of the original
    # order drawn from (seed, e) alone.
    rng: str = setting(
        "numpy",
        one_of(RNGS),
        "numpy: NumPy's legacy stream, drawn as the 2016 code drew it (the replay's bits); "
        "torch: a torch.Generator, and each epoch's order from (seed, epoch)",
    )
    subset: int | None = setting(
        None,
        integer(1, TRAIN_IMAGES, f"an integer in 1..{TRAIN_IMAGES} (the training set's size)"),
        "train on the first N training images only",
        "all 50000",
    )

    def check_combinations(self) -> None:
        if self.batch_size > self.train_images:
            raise SeqmnistError(
                f"--batch-size {self.batch_size} is larger than the {self.train_images} training images"
            )

    @property
    def train_images(self) -> int:
        return self.subset or TRAIN_IMAGES

    @property
    def warmup_epochs(self) -> float:
        """The warm-up a run takes: at most a quarter of its epochs, so that a short look at a recipe made
        for many epochs trains at its rate rather than warming up to its end."""
        return min(self.warmup, self.epochs / 4)

    @property
    def batches(self) -> int:
        """Batches per epoch: whole batches only, as the seed (a last partial batch is left out)."""
        return self.train_images // self.batch_size


@dataclass
class RunSettings(Group):
    """How a run is computed: none of these changes what it learns, beyond float rounding."""

    title: ClassVar[str] = "running"
    compute: str = setting(
        "fast",
        one_of(COMPUTES),
        "fast: the compiled engine, a parallel form or PyTorch's fused modules; definition: the cell's "
        "equations step by step with autograd, the reference the fast paths are tested against (training "
        "and evaluation)",
        effect="computes",
    )
    device: str = setting(
        "auto",
        one_of(DEVICES),
        "where to train (auto: CUDA where present, but the CPU for the seed's replay)",
        effect="computes",
    )
    eval_every: int = setting(
        1, integer(1), "accuracy on the validation (and training) set every N epochs, and after the last"
    )
    eval_train: bool = setting(
        True, BOOLEAN, "measure accuracy on the whole training set too (a forward pass over 50,000)"
    )
    eval_images: int | None = setting(
        None,
        integer(1, 10_000),
        "validation and test read only their first N images: a quick look (with --subset), whose accuracies "
        "are then not comparable with a full run's",
        "all 10000 each",
        metavar="N",
        added=True,
    )
    tensorboard: str | None = setting(
        None,
        FOLDER,
        "write TensorBoard event files into DIR/<run folder's name> (a sweep's trials: one each): every "
        "epoch's loss, accuracies, learning rate and weight histograms, and the settings; needs the "
        "tensorboard extra",
        "none",
        metavar="DIR",
        effect="records",
    )


GROUPS = {"task": TaskSettings, "model": ModelSettings, "recipe": RecipeSettings, "run": RunSettings}
# Every setting by its flat name, in the groups' order; the names are unique across the groups.
SETTINGS = {
    f.name: Setting(f.name, group, f.default, **f.metadata) for group, kind in GROUPS.items() for f in fields(kind)
}
NAMES = ("preset", *SETTINGS)  # what from_settings, grid files and sweeps take
# The names that make a run what it is: all but the settings that only say where its records go.
IDENTITY = tuple(name for name in NAMES if name == "preset" or SETTINGS[name].effect != "records")
# The settings that leave what a run learns as it is: a resumed run and the seed's yardstick take them.
NEUTRAL = tuple(name for name, s in SETTINGS.items() if s.effect != "learns")


@dataclass(frozen=True)
class Renamed:
    """A setting's name, or some of its values, before a rename."""

    old: str
    values: dict[str, str]  # today's value -> its old spelling

    @property
    def flag(self) -> str:
        return "--" + self.old.replace("_", "-")


# Settings renamed since runs were first named ("engine" also named the compiled library, and "seed" the
# 2016 work and the random seed). Old config.json files, grid files and flags still say the old names and
# are read in today's; a run's name hashes the old spelling, so a finished trial keeps its name.
RENAMED = {"compute": Renamed("engine", {"definition": "autograd"}), "rng": Renamed("rng", {"numpy": "seed"})}
FORMER_NAMES = {renamed.old: name for name, renamed in RENAMED.items()}


def current_names(settings: dict) -> dict:
    """Flat settings with any old name or value (RENAMED) in today's."""
    current = {}
    for given, value in settings.items():
        name = FORMER_NAMES.get(given, given)
        if name in current:
            raise SeqmnistError(f"{name} and {given} are one setting, under its new and old names: give one")
        if name in RENAMED and isinstance(value, str):
            value = {old: new for new, old in RENAMED[name].values.items()}.get(value, value)
        current[name] = value
    return current


def former_names(settings: dict) -> dict:
    """Flat settings in the spelling runs were first named by (RENAMED), for their names' hashes."""
    former = {}
    for name, value in settings.items():
        if name in RENAMED:
            name, value = RENAMED[name].old, RENAMED[name].values.get(value, value)
        former[name] = value
    return former


# --- a run's settings -------------------------------------------------------------------------------


@dataclass
class Config:
    """Every setting of a run, by group; the defaults are the seed's recipe (Keurulainen et al. 2016)."""

    preset: str = "seed"
    task: TaskSettings = field(default_factory=TaskSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    recipe: RecipeSettings = field(default_factory=RecipeSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> Config:
        """Reject bad settings before any work starts, naming the flag and its valid range. The preset is
        not checked: a run's files name the preset its settings began from, which may since be gone."""
        for setting in SETTINGS.values():
            value = getattr(getattr(self, setting.group), setting.name)
            if not setting.accepts(value):
                raise SeqmnistError(f"{setting.flag} must be {setting.valid.describe()} (got {value!r})")
        for group in GROUPS:
            getattr(self, group).check_combinations()
        check_spec(self.model_spec())  # what the cell takes: its class says (seqmnist.cells)
        return self

    # --- what the settings make -------------------------------------------------------------------

    def model_spec(self) -> ModelSpec:
        """The model settings, and the shape the task gives them: steps, and inputs a step."""
        steps, inputs = self.task.steps_inputs
        return ModelSpec(inputs=inputs, steps=steps, **asdict(self.model))

    def describe(self) -> str:
        """One line: task, model, recipe."""
        m, r = self.model, self.recipe
        extras = [f"{m.layers} layers" if m.layers > 1 else "", "bias" if m.bias else "no bias"]
        extras += ["batch norm" if m.norm == "batch" else "", f"dropout {m.dropout:g}" if m.dropout else ""]
        extras += [f"state {m.state}"] if m.state else []
        recipe = f"{r.optimizer} lr {r.lr:g}" + (f", {r.schedule}" if r.schedule != "constant" else "")
        recipe += f", warm-up {r.warmup_epochs:g} epochs" if r.warmup_epochs else ""
        return (
            f"{self.task.sequencer().describe()}; {m.cell} {m.hidden} ({', '.join(e for e in extras if e)}), "
            f"{self.model_spec().init_scheme} init, {m.readout}; {recipe}, batch {r.batch_size}, {r.epochs} epochs"
            + (f"; {self.not_comparable}" if self.not_comparable else "")
        )

    @property
    def not_comparable(self) -> str:
        """Why this run's accuracies do not compare with a full run's, in words; empty where they do."""
        if self.run.eval_images is None:
            return ""
        return f"validation and test on their first {self.run.eval_images:,} images: not comparable with a full run"

    # --- making one, and its flat and nested forms -----------------------------------------------

    @classmethod
    def from_settings(cls, preset: str = "seed", **overrides: object) -> Config:
        """The preset's settings, then every override that is not None (flat names). Another cell than
        the preset's leaves the preset's cell's own settings behind (CELLS_OWN: its state size, batch
        norm...), keeping its recipe. A task other than rows reads no rows, unless rows are asked for
        (which is then an error)."""
        known = PRESETS.get(preset) or RETIRED.get(preset)
        if known is None:
            raise SeqmnistError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = dict(known.settings)
        batch = look_batch(preset, given)
        if batch:
            settings["batch_size"] = batch
        if given.get("cell", settings.get("cell", "vanilla")) != settings.get("cell", "vanilla"):
            settings = {k: v for k, v in settings.items() if k not in CELLS_OWN}
        settings.update(given)
        if settings.get("task", "rows") != "rows" and "rows" not in given:
            settings["rows"] = None
        return cls.from_flat({"preset": preset, **settings}).validate()

    @classmethod
    def from_flat(cls, settings: dict) -> Config:
        """Settings by flat name, the preset among them; the defaults for the rest. Not validated."""
        settings = current_names(settings)
        unknown = set(settings) - set(NAMES)
        if unknown:
            raise SeqmnistError(f"unknown settings: {', '.join(sorted(unknown))}")
        groups: dict[str, dict] = {group: {} for group in GROUPS}
        for name, value in settings.items():
            if name != "preset":
                groups[SETTINGS[name].group][name] = value
        kinds = {group: GROUPS[group](**values) for group, values in groups.items()}
        return cls(settings.get("preset", "seed"), **kinds)

    @classmethod
    def from_file(cls, path: Path) -> Config:
        """A run's config.json: nested by group, or flat (as runs made before the groups wrote it)."""
        data = read_json(path)
        settings = _flat_settings(data)
        if settings is None:
            raise SeqmnistError(f"{path}: not a seqmnist run configuration")
        try:
            return cls.from_flat(settings).validate()
        except (SeqmnistError, TypeError) as exc:
            raise SeqmnistError(f"{path}: {exc}") from None

    def replace(self, **changes: object) -> Config:
        """These settings changed (flat names), as dataclasses.replace; not validated."""
        return self.from_flat({**self.to_flat(), **changes})

    def to_dict(self) -> dict:
        """The nested form config.json holds."""
        return asdict(self)

    def to_flat(self) -> dict:
        """Every setting by its flat name, the preset first."""
        return {"preset": self.preset, **{k: v for group in GROUPS for k, v in asdict(getattr(self, group)).items()}}

    def identity(self) -> dict:
        """The flat settings that make the run what it is: all but those that only say where its records
        go (tensorboard), and but a setting added later while it keeps its default. Trial names hash these,
        so neither a TensorBoard folder in a sweep's grid nor a new setting renames a trial, and a finished
        trial is still found."""
        identity = {k: v for k, v in self.to_flat().items() if k in IDENTITY and not _unchanged_addition(k, v)}
        return former_names(identity)


def _unchanged_addition(name: str, value: object) -> bool:
    return name in SETTINGS and SETTINGS[name].added and value == SETTINGS[name].default


def _flat_settings(data: object) -> dict | None:
    """A config.json's settings by flat name, from either form; None when it is neither."""
    if not isinstance(data, dict):
        return None
    if not any(isinstance(data.get(group), dict) for group in GROUPS):
        return current_names(data) if set(current_names(data)) <= set(NAMES) else None
    if not set(data) <= {"preset", *GROUPS}:
        return None
    flat = {"preset": data["preset"]} if "preset" in data else {}
    for group, values in data.items():
        if group == "preset":
            continue
        if not isinstance(values, dict):
            return None
        values = current_names(values)
        if not all(k in SETTINGS and SETTINGS[k].group == group for k in values):
            return None
        flat.update(values)
    return flat


# --- presets ----------------------------------------------------------------------------------------

# The settings that belong to a preset's cell rather than to its recipe: another cell leaves them behind.
CELLS_OWN = ("init", "state", *CELL_OPTIONS)
# Each task's recipe and budget for any cell: the protocol of `seqmnist benchmark` (docs/protocol.md), and
# what a cell with no preset of its own for a task trains with.
TASK_RECIPES = {"rows": "rows-lstm", "pixel": "pixel-lru", "permuted": "permuted-lru"}
FIRST_LOOKS = ("seed", "quick")  # the 2016 replay and the first run: no cell's recipe, though vanilla on rows
QUICK_LOOK = ("epochs", "subset", "eval_images", "hidden", "layers")  # changes to the protocol's budget: rows outside


LOOK_STEPS = 100  # the optimiser steps an epoch of a look at a subset keeps, at least


def look_batch(preset: str, given: dict) -> int | None:
    """The batch size of a look at a subset (--subset without --batch-size) whose preset's batch would
    leave fewer than LOOK_STEPS steps an epoch, too few for most cells to leave chance (an LSTM on 2,000
    rows: 20 steps of 100 reach 19%, 100 steps of 20 reach 59%); None where the preset's batch stands.
    The first looks keep theirs: the seed's replay reads a subset as the seed's code did."""
    subset = given.get("subset")
    if subset is None or "batch_size" in given or preset in FIRST_LOOKS:
        return None
    batch = (PRESETS.get(preset) or RETIRED[preset]).settings.get("batch_size", SETTINGS["batch_size"].default)
    return max(10, subset // LOOK_STEPS) if subset // batch < LOOK_STEPS else None


def preset_for(cell: str | None, task: str | None) -> tuple[str, str]:
    """The preset a training takes where none is named, and why, in words for its start line: with no
    cell or task named, the seed's replay; else the preset made for that cell on that task (the first
    in PRESETS but the first looks, FIRST_LOOKS), else the task's recipe for any cell (TASK_RECIPES)."""
    if cell is None and task is None:
        return "seed", "no preset named: the seed's replay"
    cell, task = cell or "vanilla", task or "rows"
    for name, preset in PRESETS.items():
        own = preset.settings
        if name in FIRST_LOOKS:
            continue
        if (own.get("cell", "vanilla"), own.get("task", "rows")) == (cell, task) and "pixels_per_step" not in own:
            return name, f"{name}'s, the preset for {cell} on the {task} task"
    name = TASK_RECIPES[task]
    return name, f"{name}'s recipe, the {task} task's for any cell (docs/protocol.md), with {cell}"


@dataclass(frozen=True)
class Preset:
    """Named partial settings (flat names: only what differs from the seed) and what it is; what it
    measured is in reference/measured.csv (:func:`measured_presets`)."""

    settings: dict
    about: str


# Beyond the seed: PyTorch's usual input scale and random streams, biases, Adam.
_MODERN = {"input_scale": 255, "rng": "torch", "bias": True, "optimizer": "adam", "eval_train": False}
# The recipe the beyond presets share: the final state's readout, a warm-up into a cosine, clipping.
_RECIPE = {**_MODERN, "readout": "last", "schedule": "cosine", "warmup": 1.0, "clip": 1.0}
_GATED = {**_RECIPE, "cell": "lstm", "hidden": 192, "optimizer": "adamw", "weight_decay": 0.05, "lr": 2e-3}
# IndRNN's recipe for the pixel tasks (Li et al. 2018; their pixelMNIST code's run.sh and opts.py): six
# layers of 128 with batch norm after each and dropout 0.1, |w| <= 5^(1/784) (their MAG's default), the top
# layer's w near one; Adam 2e-4, weight decay 1e-4 on all but the recurrent weights and biases, every
# gradient element clamped to +-10, batches of 32, the rate cut by 10 on a plateau.
_INDRNN = {
    **_MODERN,
    "task": "pixel",
    "cell": "indrnn",
    "hidden": 128,
    "layers": 6,
    "norm": "batch",
    "dropout": 0.1,
    "recurrent_max": 5.0,
    "last_layer_init": "near-one",
    "readout": "last",
    "lr": 2e-4,
    "weight_decay": 1e-4,
    "decay_recurrent": False,
    "decay_biases": False,
    "clip": 10.0,
    "clip_mode": "value",
    "batch_size": 32,
    "schedule": "plateau",
    "plateau_patience": 1,
    "epochs": 6,
}
# The linear recurrences as S4's example.py trains them: 4 pre-norm residual layers, AdamW with weight decay
# 0.01 but none on A and dt (lambda's for the LRU), which learn at a tenth of the rate, a warm-up into a
# cosine; the mean of the steps' logits (S4's mean pooling). Its 4 layers of 64 and its few epochs keep a
# run to a CPU's hour or less (docs/results.md has the minutes measured, and where).
_LINEAR = {
    **_MODERN,
    "task": "pixel",
    "hidden": 64,
    "layers": 4,
    "state": 64,
    "readout": "mean-logits",
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "recurrent_lr": 0.1,
    "decay_recurrent": False,
    "schedule": "cosine",
    "warmup": 0.5,
}
_LRU = {**_LINEAR, "cell": "lru", "lr": 4e-3, "epochs": 7}
_S4D = {**_LINEAR, "cell": "s4d", "lr": 1e-2, "epochs": 3}
PRESETS: dict[str, Preset] = {
    "seed": Preset({}, "the 2016 recipe replayed: a tanh RNN of 200, no biases, plain SGD, 100 epochs"),
    "quick": Preset(
        {**_MODERN, "hidden": 128, "readout": "last", "lr": 0.003, "epochs": 2, "schedule": "cosine"},
        "a first look: a vanilla RNN of 128 with Adam, 2 epochs",
    ),
    "rows-vanilla": Preset(
        {**_RECIPE, "cell": "vanilla", "hidden": 256, "layers": 2, "lr": 1e-3, "epochs": 25},
        "rows: two tanh layers of 256, no gates, 25 epochs",
    ),
    "rows-irnn": Preset(
        {**_RECIPE, "cell": "irnn", "hidden": 256, "lr": 5e-4, "epochs": 40},
        "rows: an IRNN of 256 (Le et al. 2015), 40 epochs",
    ),
    "rows-lstm": Preset({**_GATED, "epochs": 20}, "rows: an LSTM of 192, 20 epochs"),
    "rows-gru": Preset({**_GATED, "cell": "gru", "epochs": 20}, "rows: a GRU of 192, 20 epochs"),
    "pixel16-lstm": Preset(
        {**_GATED, "task": "pixel", "pixels_per_step": 16, "epochs": 16},
        "16 pixels a step (49 steps): an LSTM of 192, 16 epochs",
    ),
    "pixel-indrnn": Preset(
        _INDRNN,
        "pixel by pixel (784 steps): IndRNN's recipe (Li et al. 2018), 6 layers of 128, 6 epochs; "
        "pixel-s4d is ahead of it at every minute",
    ),
    "pixel-lru": Preset(_LRU, "pixel by pixel: 4 LRU layers of 64, state 64 (Orvieto et al. 2023), 7 epochs"),
    "pixel-s4d": Preset(_S4D, "pixel by pixel: 4 S4D layers of 64, state 64 (Gu et al. 2022), 3 epochs"),
    "pixel-s4d-long": Preset({**_S4D, "epochs": 12}, "pixel by pixel: pixel-s4d trained for 12 epochs"),
    "pixel-s4d-dropout": Preset(
        {**_S4D, "epochs": 12, "dropout": 0.1}, "pixel by pixel: pixel-s4d-long with S4's dropout 0.1, 12 epochs"
    ),
    "permuted-lru": Preset(
        {**_LRU, "task": "permuted", "permutation": "bitrev"}, "pixels in bit-reversal order: as pixel-lru"
    ),
    "permuted-s4d": Preset(
        {**_S4D, "task": "permuted", "permutation": "bitrev"}, "pixels in bit-reversal order: as pixel-s4d"
    ),
}
# Presets since removed, kept so that their runs still load, resume and keep their trial names; not offered.
RETIRED: dict[str, Preset] = {
    "permuted-indrnn": Preset(
        {**_INDRNN, "task": "permuted", "permutation": "bitrev"},
        "pixels in bit-reversal order: as pixel-indrnn; removed unmeasured, since pixel-indrnn is behind "
        "pixel-s4d at every minute and IndRNN's own permuted figure (97.16%) is below permuted-lru's",
    ),
}

# What each preset measured (docs/results/, written by scripts/results_table.py): its test accuracy at the
# best validation epoch over its seeds, the first seed's minutes and the machine they were measured on.
MEASURED = Path(__file__).with_name("reference") / "measured.csv"


def measured_presets() -> dict[str, dict[str, str]]:
    """reference/measured.csv by preset name."""
    with open(MEASURED, newline="") as f:
        return {row["preset"]: row for row in csv.DictReader(f)}
