"""The compiled library: built from its C++ sources with PyTorch's cpp_extension on first use, kept in
the user's cache under a name that pins its sources, flags, machine, Python and PyTorch, and loaded
only if it brings no second OpenMP runtime. Its parts: the elementwise cells' loops (engine.cpp, driven
by :mod:`seqmnist.engine`), the diagonal recurrences and the linear cells' gate (scan.cpp, gate.cpp,
wrapped by :mod:`seqmnist.kernels`), and what they share (library.h: the argument checks, and the
entry points of scan.cpp and gate.cpp, which engine.cpp alone binds to Python: only it includes
torch/extension.h, most of a build's time).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from .files import user_cache, write_text
from .readouts import engine_readout_codes

# One library: the elementwise cells' loops, the diagonal recurrences (the LRU's, the IndRNN's) and the
# linear cells' gate.
SOURCES = tuple(Path(__file__).with_name(name) for name in ("engine.cpp", "scan.cpp", "gate.cpp"))
HEADERS = (Path(__file__).with_name("library.h"),)


@functools.cache
def native_loops():
    """The compiled loops of engine.cpp: built on first use, then loaded from disk.

    None with SEQMNIST_NATIVE=0, or where they cannot be built (no C++ compiler), with one line
    on stderr: the models then use PyTorch's own modules, more slowly.
    """
    if os.environ.get("SEQMNIST_NATIVE", "1") == "0":
        return None
    try:
        return _load_or_build()
    except Exception as exc:  # no compiler, no ninja, no writable cache: PyTorch's modules still work
        print(f"seqmnist: warning: {exc}; using PyTorch's own modules (slower)", file=sys.stderr)
        return None


# AVX2 where PyTorch's own kernels use it (or better), and AVX-512 for gate.cpp's passes where they
# use that: never an instruction this CPU lacks, even when the cache is shared with other machines (the
# flags name the build). -fopenmp: at::parallel_for, inlined from PyTorch's headers, is an OpenMP
# parallel region, run on PyTorch's threads (see _link_flags).
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
_CFLAGS = [
    "-O3",
    "-fopenmp",
    *(["-mavx2", "-mfma"] if _CAPABILITY in ("AVX2", "AVX512") else []),
    *(["-DSEQMNIST_AVX512"] if _CAPABILITY == "AVX512" else []),
]
# The OpenMP runtimes' files: GNU's (libgomp, also as a wheel's libgomp-<hash>), Intel's, LLVM's.
_OPENMP_FILE = re.compile(r"lib(?:gomp|iomp5|omp)(?:-[0-9a-f]+)?\.so(?:\.\d+)*")


def openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process, as real paths (empty where /proc is not).

    Two in one process mean two thread pools that know nothing of each other: the engine's parallel
    regions would ignore ``torch.set_num_threads`` and oversubscribe the cores, or worse.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    paths = {fields[5] for fields in (line.split(maxsplit=5) for line in maps.splitlines()) if len(fields) == 6}
    return {os.path.realpath(path) for path in paths if _OPENMP_FILE.fullmatch(os.path.basename(path))}


def _link_flags() -> list[str]:
    """Link the OpenMP runtime PyTorch loaded (its wheel ships one) rather than the compiler's, with
    its directory as the search path: ``ldd`` then shows the runtime the process will really use, and
    the linker checks that every OpenMP symbol the engine calls is in PyTorch's runtime. Without
    exactly one runtime found (no /proc), the compiler's own, as -fopenmp links it."""
    runtimes = openmp_runtimes()
    if len(runtimes) != 1:
        return ["-fopenmp"]
    (runtime,) = runtimes
    return [runtime, f"-Wl,-rpath,{Path(runtime).parent}"]


def _load_or_build():
    """The engine, loaded only if it brings no OpenMP runtime beside PyTorch's (openmp_runtimes) and
    knows the readouts by the codes seqmnist.readouts gives them."""
    before = openmp_runtimes()
    module = _load_or_build_unchecked()
    added = openmp_runtimes() - before
    if added:
        raise RuntimeError(f"the CPU engine loaded a second OpenMP runtime ({', '.join(sorted(added))})")
    exported, ours = dict(module.readout_codes), engine_readout_codes()
    if exported != ours:
        raise RuntimeError(f"the CPU engine's readout codes {exported} are not seqmnist.readouts' {ours}")
    return module


def built_library(ldflags: list[str] | None = None) -> Path:
    """Where the compiled engine is, or will be once built: one directory per source text, flags
    (which name PyTorch's directory), machine, Python and PyTorch, so that builds never clash."""
    ldflags = _link_flags() if ldflags is None else ldflags
    flags = " ".join([*_CFLAGS, *ldflags, platform.machine()])
    what = b"".join(source.read_bytes() for source in (*SOURCES, *HEADERS)) + flags.encode()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    build = user_cache("engine") / f"{tag.replace('+', '-')}-{hashlib.sha256(what).hexdigest()[:12]}"
    return build / "seqmnist_engine.so"


def _load_or_build_unchecked():
    """Import the built module; else build it in a private directory and move it into place, so that
    a build killed at any instant, or two processes building at once, leave no half-written file."""
    ldflags = _link_flags()
    built = built_library(ldflags)
    build, failed = built.parent, built.parent / "failed.txt"
    if built.exists():  # the directory's name pins what it was built from: no need to start ninja
        return _import_module(built)
    if failed.exists():
        raise _did_not_build(failed.read_text().strip(), build)
    build.mkdir(parents=True, exist_ok=True)
    print(f"seqmnist: compiling the CPU engine (once, kept in {build.parent})", file=sys.stderr, flush=True)
    from torch.utils import cpp_extension  # imports setuptools: only when building

    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=build))
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its compiler-version banner is noise here
    try:
        module = cpp_extension.load(
            name="seqmnist_engine",
            sources=[str(source) for source in SOURCES],
            extra_cflags=_CFLAGS,
            extra_include_paths=[str(Path(__file__).parent)],
            extra_ldflags=ldflags,
            build_directory=str(scratch),
        )
        os.replace(scratch / built.name, built)
        return module
    except Exception as exc:
        reason = _build_error(str(exc))
        write_text(failed, reason + "\n")
        raise _did_not_build(reason, build) from exc
    finally:
        logger.setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)


def _did_not_build(reason: str, build: Path) -> RuntimeError:
    return RuntimeError(f"the CPU engine did not build ({reason}; delete {build} to retry)")


def _build_error(log: str) -> str:
    """The line of a failed build's log that says why: the first error, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("ninja:")]
    errors = [line for line in lines if "error:" in line.lower() or "not found" in line.lower()]
    return ((errors or lines or ["unknown reason"])[0 if errors else -1])[:160]


def _import_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
