"""Feed seqmnist every kind of bad input and print what it answered, as a Markdown table.

    python scripts/bad_inputs.py > docs/bad_inputs.md

Each case is a real process on real (damaged) files; the table records the
exit code and the one line on stderr.
"""

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("SEQMNIST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def data_dir(root: Path, name: str, damage) -> Path:
    directory = root / name
    directory.mkdir()
    for n in NAMES:
        shutil.copy(SHARED / f"{n}.gz", directory)
    damage(directory)
    return directory


def cases(root: Path) -> list[tuple[str, list[str]]]:
    def write(name: str, payload: bytes):
        return lambda d: (d / f"{name}.gz").write_bytes(payload)

    def truncate(d: Path) -> None:
        p = d / "train-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])

    def corrupt(d: Path) -> None:
        p = d / "t10k-images-idx3-ubyte.gz"
        raw = bytearray(p.read_bytes())
        raw[5000:5100] = b"\xff" * 100
        p.write_bytes(bytes(raw))

    labels = np.zeros(10000, np.uint8)
    labels[3] = 11
    damaged = {
        "truncated gzip": truncate,
        "corrupt gzip": corrupt,
        "not gzip, .gz name": write("train-labels-idx1-ubyte", b"plain text"),
        "empty file": write("t10k-labels-idx1-ubyte", b""),
        "wrong magic number": write("t10k-labels-idx1-ubyte", gzip.compress(b"\x08\x01\x00\x00" + labels.tobytes())),
        "wrong element type": write("t10k-labels-idx1-ubyte", gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8)),
        "wrong image size": write("t10k-images-idx3-ubyte", gzip.compress(idx(np.zeros((10000, 32, 32), np.uint8)))),
        "label count differs from images": write("t10k-labels-idx1-ubyte", gzip.compress(idx(labels[:9999]))),
        "labels outside 0..9": write("t10k-labels-idx1-ubyte", gzip.compress(idx(labels))),
        "another dataset's sizes": write(
            "t10k-images-idx3-ubyte", gzip.compress(idx(np.zeros((18800, 28, 28), np.uint8)))
        ),
        "missing file": lambda d: (d / "train-labels-idx1-ubyte.gz").unlink(),
        "directory in place of a file": lambda d: (
            (d / "t10k-images-idx3-ubyte.gz").unlink(),
            (d / "t10k-images-idx3-ubyte.gz").mkdir(),
        ),
    }
    out = [
        (
            f"data: {name}",
            [
                "train",
                "--epochs",
                "1",
                "--data-dir",
                str(data_dir(root, name.replace(" ", "_").replace(",", "").replace(".", ""), damage)),
            ],
        )
        for name, damage in damaged.items()
    ]
    bad_run = root / "badrun"
    bad_run.mkdir()
    (bad_run / "config.json").write_text('{"hidden": 200, "rows": 28}')
    (bad_run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    out += [
        ("flag: --epochs 0", ["train", "--epochs", "0"]),
        ("flag: --batch-size -1", ["train", "--batch-size", "-1"]),
        ("flag: --hidden 0", ["train", "--hidden", "0"]),
        ("flag: --lr -0.5", ["train", "--lr", "-0.5"]),
        ("flag: --lr nan", ["train", "--lr", "nan"]),
        ("flag: --rows 0", ["train", "--rows", "0"]),
        ("flag: --rows 29", ["train", "--rows", "29"]),
        ("flag: --preset huge", ["train", "--preset", "huge"]),
        ("flag: --engine turbo", ["train", "--engine", "turbo"]),
        ("flag: --device tpu", ["train", "--device", "tpu"]),
        ("flag: --eval-every 0", ["train", "--eval-every", "0"]),
        ("flag: --epochs ten", ["train", "--epochs", "ten"]),
        ("flag: unknown flag", ["train", "--warp", "9"]),
        ("flag: --jobs 0", ["reproduce", "--jobs", "0", "--out", str(root / "r")]),
        ("data dir does not exist", ["train", "--data-dir", str(root / "nowhere")]),
        ("resume: no such run", ["train", "--resume", str(root / "nowhere")]),
        ("resume: with new settings", ["train", "--resume", str(bad_run), "--lr", "1"]),
        ("evaluate: no such run", ["evaluate", str(root / "nowhere")]),
        ("evaluate: garbage model file", ["evaluate", str(bad_run)]),
        (
            "diverging training (--lr 1e9)",
            ["train", "--epochs", "2", "--subset", "1000", "--lr", "1e9", "--out", str(root / "div")],
        ),
    ]
    return out


def main() -> None:
    print("| bad input | exit | message |\n|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, args in cases(root):
            result = subprocess.run(
                [sys.executable, "-m", "seqmnist.cli", *args],
                capture_output=True,
                text=True,
                cwd=root,
                env={**os.environ, "SEQMNIST_DATA": str(SHARED)},
            )
            message = result.stderr.strip().replace(tmp, "$TMP").replace("|", "\\|")
            if "\n" in message:
                message = "MORE THAN ONE LINE: " + message.replace("\n", " / ")
            print(f"| {name} | {result.returncode} | `{message}` |", flush=True)


if __name__ == "__main__":
    main()
