"""Settings: every knob of a run in one plain dataclass whose defaults are the seed's recipe,
and the presets, named sets of settings that flags on the command line override."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .errors import SeqmnistError
from .files import read_json

ENGINES = ("fast", "autograd")
DEVICES = ("auto", "cpu", "cuda")
RNGS = ("seed", "torch")
TRAIN_IMAGES = 50_000


@dataclass
class Config:
    """Every setting of a run; the defaults are the seed's recipe (Keurulainen et al. 2016)."""

    preset: str = "seed"
    epochs: int = 100
    rows: int = 28
    hidden: int = 200
    lr: float = 0.01
    batch_size: int = 100
    seed: int = 12345
    # Where the randomness comes from. "seed": NumPy's legacy stream as the seed's code used it:
    # np.random.seed(seed), the weights drawn U, V, W in that order, then every epoch a permutation
    # applied to the previous epoch's order. "torch": the weights from torch.Generator(seed), and
    # epoch e's order a permutation of the original order drawn from (seed, e) alone.
    rng: str = "seed"
    # Pixel intensity = byte / input_scale: the seed read mnist.pkl.gz, which holds byte / 256.
    input_scale: int = 256
    subset: int | None = None
    engine: str = "fast"
    device: str = "auto"
    eval_every: int = 1  # accuracy on the training and validation sets every N epochs (always after the last)

    def validate(self) -> Config:
        """Reject bad settings before any work starts, naming the flag and its valid range."""
        checks = [
            ("--preset", self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
            ("--epochs", _is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("--rows", _is_int(self.rows) and 1 <= self.rows <= 28, "an integer in 1..28"),
            ("--hidden", _is_int(self.hidden) and 1 <= self.hidden <= 65536, "an integer in 1..65536"),
            ("--lr", _is_number(self.lr) and 0 < self.lr < math.inf, "a finite number > 0"),
            ("--batch-size", _is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("--seed", _is_int(self.seed) and 0 <= self.seed < 2**32, "an integer in 0..2^32-1"),
            ("--rng", self.rng in RNGS, f"one of {', '.join(RNGS)}"),
            ("--input-scale", self.input_scale in (255, 256), "255 or 256"),
            (
                "--subset",
                self.subset is None or (_is_int(self.subset) and 1 <= self.subset <= TRAIN_IMAGES),
                f"an integer in 1..{TRAIN_IMAGES} (the training set's size)",
            ),
            ("--engine", self.engine in ENGINES, f"one of {', '.join(ENGINES)}"),
            ("--device", self.device in DEVICES, f"one of {', '.join(DEVICES)}"),
            ("--eval-every", _is_int(self.eval_every) and self.eval_every >= 1, "an integer >= 1"),
        ]
        for flag, ok, valid in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise SeqmnistError(f"{flag} must be {valid} (got {value!r})")
        if self.batch_size > self.train_images:
            raise SeqmnistError(
                f"--batch-size {self.batch_size} is larger than the {self.train_images} training images"
            )
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SeqmnistError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
        return self

    @property
    def train_images(self) -> int:
        return self.subset or TRAIN_IMAGES

    @property
    def batches(self) -> int:
        """Batches per epoch: whole batches only, as the seed (a last partial batch is left out)."""
        return self.train_images // self.batch_size

    @classmethod
    def from_settings(cls, preset: str = "seed", **overrides: object) -> Config:
        """The preset's settings, then every override that is not None."""
        if preset not in PRESETS:
            raise SeqmnistError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
        settings = {**PRESETS[preset].settings, "preset": preset}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings).validate()

    @classmethod
    def from_file(cls, path: Path) -> Config:
        data = read_json(path)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise SeqmnistError(f"{path}: not a seqmnist run configuration")
        try:
            return cls(**data).validate()
        except SeqmnistError as exc:
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


PRESETS: dict[str, Preset] = {
    "seed": Preset({}, "the 2016 recipe, replayed number for number (100 epochs of plain SGD)"),
    "quick": Preset(
        {"epochs": 3, "subset": 10000, "lr": 0.1, "rng": "torch", "input_scale": 255}, "a first look in seconds"
    ),
}
