"""What this machine offers a training: which device it runs on, how many CPU threads it may use, and
how the C library hands out memory on the CPU.

``--device auto`` means CUDA where one is present, except for a run drawn from the seed's NumPy
stream (``rng = "numpy"``, the seed preset): its claim, the seed's logs replayed digit for digit, holds
on the CPU's compiled engine only, so auto keeps it there. Every training prints the device and the
path it takes, and records both per session in its summary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import platform
from pathlib import Path

import torch

from .errors import SeqmnistError

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def pick_device(requested: str, replay: bool) -> tuple[torch.device, str]:
    """The device a training runs on and why; ``replay``: the run replays the seed on the CPU."""
    if requested == "auto":
        if replay:
            return torch.device("cpu"), "auto: the seed's replay is a CPU claim"
        if torch.cuda.is_available():
            return torch.device("cuda"), "auto: a CUDA device is present"
        return torch.device("cpu"), "auto: no CUDA device here"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SeqmnistError(
            "--device cuda: no CUDA device is available here; train with --device cpu "
            "(a run saved with device cuda continues with: seqmnist train --resume RUN --device cpu)"
        )
    return torch.device(requested), "asked for"


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, bounded by a cgroup's CPU quota (a container
    limited to 4 CPUs of a 64-core host gets 4), not ``os.cpu_count()``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, _cgroup_quota() or cpus))


def _cgroup_quota() -> int | None:
    """cgroup v2's ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" when unlimited) as whole CPUs."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):
        return None


def use_threads(threads: int | None) -> int:
    """Set PyTorch's (and so the engine's and MKL's) thread count: ``threads``, else every CPU this
    process may use. Returns the count."""
    if threads is not None and threads < 1:
        raise SeqmnistError(f"--threads must be an integer >= 1 (got {threads})")
    count = threads or available_cpus()
    torch.set_num_threads(count)
    return count


# glibc's mallopt parameters (malloc.h): how many blocks may be mmap'd, and how much free memory at the
# top of the heap is kept rather than given back.
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next batch rather than give it back. A pixel-task
    batch's activations are tensors of tens of MB, above malloc's mmap threshold: each would be a fresh
    mapping whose pages the kernel zeroes at first touch, every batch: tens of thousands of page faults a
    pixel-lru step (bench/freed_memory.py counts them). Served from the heap, the process's memory stays at
    its peak instead, for the rest of the process (a notebook or test session that trains keeps it too):
    the setting is the C library's, process-wide. True where it applied (glibc); elsewhere nothing changes."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt and mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def cpu_model() -> str:
    """The processor's name, as a person would say which machine a number came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def multiply_fingerprint() -> str:
    """The bits of one float32 multiply of the engine's shape, hashed: two machines whose fingerprints
    differ round differently (MKL picks its kernels per CPU: AVX2, AVX-512, AMX), so no result of
    many steps can be expected to agree to the last bit between them. Recorded per session."""
    draws = torch.Generator().manual_seed(0)
    a, b = torch.rand(100, 228, generator=draws), torch.rand(228, 224, generator=draws)
    return hashlib.sha256((a @ b).numpy().tobytes()).hexdigest()[:12]
