"""MNIST: find it, fetch it, verify it, parse it, split it.

Where the four IDX files come from, first match wins:
  1. an explicit directory (``--data-dir``),
  2. the environment variable ``SEQMNIST_DATA``,
  3. a per-user cache (``$XDG_CACHE_HOME/seqmnist/mnist``), downloaded on
     first use from the mirrors torchvision uses and checked against the
     published MD5 of each ``.gz``.

Everything read is validated (magic number, element type, dimensions, counts,
label range); a violation raises :class:`SeqmnistError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SeqmnistError
from .files import DOWNLOAD_TIMEOUT, choose_dir, user_cache
from .files import download as download_verified

ENV_VAR = "SEQMNIST_DATA"
CACHE_NAME = "mnist"
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


@dataclass(frozen=True)
class Resource:
    """One IDX file: its name, the MD5 of the published .gz, and what it must hold."""

    name: str
    md5: str
    shape: tuple[int, ...]


RESOURCES = {
    "train_images": Resource("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    "train_labels": Resource("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    "test_images": Resource("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    "test_labels": Resource("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
}
# The MD5 of each file's IDX bytes, however a copy is compressed: MNIST's own images and labels.
CONTENT_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

TRAIN_IMAGES = 50_000  # the seed's split of the 60,000 training images: the first 50,000 train, the rest validate

IDX_UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


def cache_dir() -> Path:
    return user_cache(CACHE_NAME)


def parse_idx(raw: bytes, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode an uncompressed IDX byte string that must hold uint8 data of ``shape``.

    Raises SeqmnistError, never anything else, for any malformed input.
    """
    if len(raw) < 4:
        raise SeqmnistError(f"{name}: too short for an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise SeqmnistError(f"{name}: bad magic number {raw[:4].hex()} (not an IDX file)")
    if raw[2] != IDX_UBYTE:
        raise SeqmnistError(f"{name}: element type 0x{raw[2]:02x}, expected unsigned bytes (0x08)")
    ndim = raw[3]
    if ndim != len(shape):
        raise SeqmnistError(f"{name}: {ndim} dimensions, expected {len(shape)}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SeqmnistError(f"{name}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if dims != shape:
        raise SeqmnistError(f"{name}: dimensions {dims}, expected {shape}")
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise SeqmnistError(f"{name}: {len(raw) - header} data bytes, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_bytes(path: Path) -> bytes:
    """Read a raw or gzip-compressed file, telling the two apart by content."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SeqmnistError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != GZIP_MAGIC:
        if path.suffix == ".gz":
            raise SeqmnistError(f"{path}: not a gzip file")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise SeqmnistError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def find_file(directory: Path, resource: Resource) -> Path:
    for candidate in (directory / f"{resource.name}.gz", directory / resource.name):
        if candidate.exists():
            return candidate
    raise SeqmnistError(
        f"{directory / resource.name}[.gz]: missing; point --data-dir or {ENV_VAR} at a "
        "directory holding the four MNIST IDX files"
    )


def download(
    resource: Resource, directory: Path, mirrors: tuple[str, ...] = MIRRORS, timeout: float = DOWNLOAD_TIMEOUT
) -> Path:
    """Fetch ``resource``.gz into ``directory`` from the first mirror that serves a copy with its published MD5
    (nothing is left behind otherwise: see :func:`seqmnist.files.download`)."""
    name = f"{resource.name}.gz"
    advice = f"if offline, point --data-dir or {ENV_VAR} at a directory holding the MNIST IDX files"
    return download_verified([m + name for m in mirrors], directory / name, "md5", resource.md5, advice, timeout)


def resolve_dir(data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """Pick the data directory; the flag is true when it is the download cache."""
    return choose_dir(data_dir, "--data-dir", ENV_VAR, CACHE_NAME)


def read_resource(path: Path, resource: Resource) -> tuple[np.ndarray, bool]:
    """Read and validate one IDX file (labels must also lie in 0..9); and whether it is MNIST's own."""
    data = read_bytes(path)
    array = parse_idx(data, str(path), resource.shape)
    if array.ndim == 1 and array.size and array.max() > 9:
        bad = int(np.argmax(array > 9))
        raise SeqmnistError(f"{path}: label {array[bad]} at index {bad} is outside 0..9")
    return array, CONTENT_MD5.get(resource.name) in (None, hashlib.md5(data).hexdigest())


def load_arrays(directory: Path, may_download: bool, mirrors: tuple[str, ...] = MIRRORS) -> dict[str, np.ndarray]:
    """The four arrays, each file checked; files that read well but do not hold MNIST's own bytes (other
    digits in MNIST's format, say) are one line of warning, and the run goes on."""
    arrays, unlike = {}, []
    for key, resource in RESOURCES.items():
        try:
            path = find_file(directory, resource)
        except SeqmnistError:
            if not may_download:
                raise
            path = download(resource, directory, mirrors)
        arrays[key], own = read_resource(path, resource)
        if not own:
            unlike.append(path.name)
    if unlike:
        print(
            f"seqmnist: warning: {directory}: {', '.join(unlike)} do not hold MNIST's own images and labels (their "
            "MD5s differ): accuracies on them are not MNIST's",
            file=sys.stderr,
        )
    return arrays


@dataclass
class MNIST:
    """The seed's split of MNIST: 50,000 train, 10,000 validation, 10,000 test.

    Images are the file's bytes, uint8 tensors of shape (N, 28, 28); labels int64.
    How they become the model's input (scale, order, steps) is :mod:`seqmnist.sequence`'s job.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: Path

    @classmethod
    def load(cls, data_dir: str | os.PathLike | None = None, mirrors: tuple[str, ...] = MIRRORS) -> MNIST:
        directory, is_cache = resolve_dir(data_dir)
        arrays = load_arrays(directory, may_download=is_cache, mirrors=mirrors)
        return cls.from_arrays(arrays, directory)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: Path) -> MNIST:
        """The split from the four arrays :func:`load_arrays` returns (also what a cluster ships)."""
        train_x, train_y = torch.from_numpy(arrays["train_images"].copy()), _labels(arrays["train_labels"])
        return cls(
            train_x=train_x[:TRAIN_IMAGES],
            train_y=train_y[:TRAIN_IMAGES],
            val_x=train_x[TRAIN_IMAGES:],
            val_y=train_y[TRAIN_IMAGES:],
            test_x=torch.from_numpy(arrays["test_images"].copy()),
            test_y=_labels(arrays["test_labels"]),
            source=Path(source),
        )

    def labelled_sets(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        return [
            ("train", self.train_x, self.train_y),
            ("val", self.val_x, self.val_y),
            ("test", self.test_x, self.test_y),
        ]

    def to(self, device: torch.device) -> MNIST:
        tensors = [t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)]
        return MNIST(*tensors, self.source)

    def subset(self, n: int | None, evaluated: int | None = None) -> MNIST:
        """Only the first ``n`` training images (None: all), and of validation and test the first
        ``evaluated`` (None: all): a quick look."""
        train, held = slice(n), slice(evaluated)
        sets = (self.train_x[train], self.train_y[train], self.val_x[held], self.val_y[held])
        return MNIST(*sets, self.test_x[held], self.test_y[held], self.source)


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.int64))
