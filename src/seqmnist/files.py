"""Files on disk: atomic writes, JSON, checked safetensors, and the per-user cache.

Every file a run leaves is written to a temporary sibling and renamed into
place, so a process killed at any instant (even by SIGKILL) leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
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
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


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


def load_tensors(path: Path, shapes: Mapping[str, tuple[int, ...]], with_metadata: bool = False):
    """Load a safetensors file and insist on exactly the expected names, shapes and float32.

    Returns the tensors, or (tensors, metadata) with ``with_metadata``.
    """
    path = Path(path)
    if not path.is_file():
        raise SeqmnistError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SeqmnistError(f"{path}: not a readable safetensors file ({exc})") from None
    if set(tensors) != set(shapes):
        raise SeqmnistError(f"{path}: holds tensors {sorted(tensors)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise SeqmnistError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
            )
        if tensors[name].dtype != torch.float32:
            raise SeqmnistError(f"{path}: tensor {name} is {tensors[name].dtype}, expected float32")
    return (tensors, metadata) if with_metadata else tensors
