"""Files on disk: atomic writes, JSON, CSV, checked safetensors, the per-user cache and verified downloads.

Every file a run leaves is written to a temporary sibling and renamed into
place, so a process killed at any instant (even by SIGKILL) leaves either the
old file or the new one, never half of one. Files get the permissions any
other tool would give them (0666 less the umask), so a teammate on a shared
machine can read a run.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import http.client
import io
import json
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import SeqmnistError


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/seqmnist/NAME`` (``~/.cache`` by default): downloads and builds kept across runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seqmnist" / name


def choose_dir(given: str | os.PathLike | None, flag: str, env_var: str, cache: str) -> tuple[Path, bool]:
    """Where a kind of input file lies, first match wins: the flag, the environment variable, the
    per-user cache ``cache``; the flag is true when it is the cache (the only place a download may fill)."""
    if given:
        path, origin = Path(given), flag
    elif os.environ.get(env_var):
        path, origin = Path(os.environ[env_var]), env_var
    else:
        return user_cache(cache), True
    if not path.is_dir():
        raise SeqmnistError(f"{path}: not a directory (from {origin})")
    return path, False


@functools.cache
def _umask() -> int:
    """The process's umask (reading it means setting it, so it is read once and put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600 (and a writer may have replaced it)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_json(obj: Any, indent: str = "") -> str:
    """JSON indented like ``json.dumps(indent=2)``, but a list of plain values stays on one line,
    so a confusion matrix reads as one line per true digit; NaN (not measured) is written as null."""
    inner = indent + "  "
    if isinstance(obj, float) and math.isnan(obj):
        return "null"
    if isinstance(obj, Mapping) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + f"\n{indent}]"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in obj) + "]"
    return json.dumps(obj)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, to_json(obj) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> None:
    """Rows under a header of ``columns`` (by default the first row's keys), one line each."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SeqmnistError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SeqmnistError(f"{path}: not a readable JSON file ({exc})") from None


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous, on the CPU), atomically; ``metadata`` rides in its header."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its metadata; any failure is one SeqmnistError."""
    path = Path(path)
    if not path.is_file():
        raise SeqmnistError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SeqmnistError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata


def check_tensors(path: Path, tensors: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Insist on exactly the names and shapes of the model's state_dict (weights, a batch norm's running
    statistics), in float32."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if set(tensors) != set(shapes):
        raise SeqmnistError(f"{path}: holds tensors {sorted(tensors)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise SeqmnistError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
            )
        if tensors[name].dtype != torch.float32:
            raise SeqmnistError(f"{path}: tensor {name} is {tensors[name].dtype}, expected float32")


# --- verified downloads -------------------------------------------------------------------------

DOWNLOAD_TIMEOUT = 30.0  # seconds a server may stay silent before the download is given up


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes (``algorithm``: any hashlib name, md5 or sha256 here)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, algorithm: str, expected: str) -> None:
    """Insist that a file is the one published: its digest must be ``expected`` (the error names
    neither the file nor where it came from: the caller knows which of them the user needs)."""
    got = file_digest(path, algorithm)
    if got != expected:
        raise SeqmnistError(f"{algorithm.upper()} {got}, expected {expected}")


def _fetch(url: str, tmp: Path, timeout: float) -> None:
    """Copy ``url``'s body into ``tmp``; a body shorter than the length the server announced is an
    error here (the checksum would catch it too, but less tellingly)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        announced = response.headers.get("Content-Length")
        try:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
        except http.client.IncompleteRead as exc:
            out.write(exc.partial)
        written = out.tell()
    if announced and announced.isdigit() and written != int(announced):
        raise SeqmnistError(f"truncated: {written} of {announced} bytes")


def download(
    urls: Sequence[str],
    target: Path,
    algorithm: str,
    expected: str,
    advice: str,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> Path:
    """Fetch ``target`` from the first URL that serves a copy whose digest is ``expected``.

    The file appears under its final name only after its digest matched, so an interrupted,
    truncated, corrupt or timed-out download never leaves a file behind that could be used; a
    server silent for ``timeout`` seconds is given up. ``advice`` (how to do without the network)
    ends the one-line error when no URL served a good copy.
    """
    failures = []
    for url in urls:
        try:
            with atomic_path(target) as tmp:
                _fetch(url, tmp, timeout)
                check_digest(tmp, algorithm, expected)
            return target
        except (OSError, urllib.error.URLError, http.client.HTTPException, SeqmnistError) as exc:
            failures.append(f"{url}: {' '.join(str(exc).split()) or type(exc).__name__}")
    raise SeqmnistError(f"could not download {target.name} ({'; '.join(failures)}); {advice}")


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "", padded: bool = False
) -> str:
    """A Markdown table, its lines joined: ``align`` one letter a column, ``r`` for the right (numbers),
    else the left; ``padded``: every cell padded to its column's width, for a terminal."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    align = align.ljust(len(header), "l")[: len(header)]
    widths = [max(len(row[i]) for row in cells) if padded else 0 for i in range(len(header))]

    def line(row: list[str]) -> str:
        texts = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True))
        return "| " + " | ".join(texts) + " |"

    dashes = [w + 1 if padded else 3 for w in widths]
    rule = "|" + "|".join("-" * d + (":" if a == "r" else "-") for d, a in zip(dashes, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])

