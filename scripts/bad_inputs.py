"""Feed seqmnist every kind of bad input and print what it answered, as a Markdown table.

    python scripts/bad_inputs.py > docs/bad_inputs.md

Each case is a real process on real (damaged) files; the table records the
exit code and the one line on stderr.
"""

import gzip
import json
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
        ("flag: --compute turbo", ["train", "--compute", "turbo"]),
        ("flag: --device tpu", ["train", "--device", "tpu"]),
        ("flag: --eval-every 0", ["train", "--eval-every", "0"]),
        ("flag: --epochs ten", ["train", "--epochs", "ten"]),
        ("flag: unknown flag", ["train", "--warp", "9"]),
        ("flag: --jobs 0", ["reproduce", "--jobs", "0", "--out", str(root / "r")]),
        ("data dir does not exist", ["train", "--data-dir", str(root / "nowhere")]),
        ("resume: no such run", ["train", "--resume", str(root / "nowhere")]),
        ("resume: with new settings", ["train", "--resume", str(bad_run), "--lr", "1"]),
        ("evaluate: no such run", ["evaluate", str(root / "nowhere")]),
        ("evaluate: a folder that is not a run", ["evaluate", str(root)]),
        ("predict: the run directory forgotten", ["predict", str(digit_png(root))]),
        ("evaluate: garbage model file", ["evaluate", str(bad_run)]),
        (
            "diverging training (--lr 1e9)",
            ["train", "--epochs", "2", "--subset", "1000", "--lr", "1e9", "--out", str(root / "div")],
        ),
    ]
    return out + lifecycle_cases(root) + beyond_cases() + file_cases(root) + export_cases(root) + saved_cases(root)


def digit_png(root: Path) -> Path:
    """A small image of a digit-like stroke, for the cases that need an image file."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(image).line([(20, 10), (44, 10), (28, 54)], fill=0, width=5)
    image.save(root / "d8.png")
    return root / "d8.png"


def lifecycle_cases(root: Path) -> list[tuple[str, list[str]]]:
    """The run's lifecycle and the command line's edges."""
    (root / "a-file").write_text("not a directory")
    return [
        ("--out is a file", ["train", "--out", str(root / "a-file")]),
        ("--out cannot be created", ["train", "--out", "/proc/nope/run"]),
        ("--subset 999999", ["train", "--subset", "999999"]),
        ("--batch-size larger than --subset", ["train", "--subset", "50", "--batch-size", "100"]),
        ("abbreviated flags (--epoch 1 --subse 2000)", ["train", "--epoch", "1", "--subse", "2000"]),
        ("--resume --epochs 0", ["train", "--resume", str(root / "nowhere"), "--epochs", "0"]),
    ]


def beyond_cases() -> list[tuple[str, list[str]]]:
    """Settings of the cells, readouts, tasks and recipes that make no run."""
    return [
        ("unknown cell", ["train", "--cell", "transformer"]),
        ("pixels per step not dividing 784", ["train", "--task", "pixel", "--pixels-per-step", "5"]),
        ("--rows with the pixel task", ["train", "--task", "pixel", "--rows", "14"]),
        ("--pixels-per-step with the rows task", ["train", "--pixels-per-step", "16"]),
        ("an init the cell cannot use", ["train", "--cell", "indrnn", "--init", "orthogonal"]),
        ("identity init for a gated cell", ["train", "--cell", "lstm", "--init", "identity"]),
        ("unknown permutation", ["train", "--task", "permuted", "--permutation", "shuffled"]),
        ("a permutation without the permuted task", ["train", "--permutation", "bitrev"]),
        ("unknown readout", ["train", "--readout", "max"]),
        ("a readout the cell cannot use", ["train", "--task", "pixel", "--cell", "lru", "--readout", "mean-softmax"]),
        ("--state out of range", ["train", "--cell", "lru", "--readout", "last", "--state", "2048"]),
        ("an odd --state for s4d", ["train", "--cell", "s4d", "--readout", "last", "--state", "63"]),
        ("--state for a cell without one", ["train", "--cell", "gru", "--state", "32"]),
        ("unknown optimizer", ["train", "--optimizer", "lbfgs"]),
        ("--momentum 1.5", ["train", "--optimizer", "momentum", "--momentum", "1.5"]),
        ("--clip -1", ["train", "--clip", "-1"]),
        ("--layers 0", ["train", "--layers", "0"]),
        ("--warmup -2", ["train", "--warmup", "-2"]),
        ("--patience -1", ["train", "--patience", "-1"]),
        ("bench: --all with a cell", ["bench", "--all", "--cell", "gru"]),
        ("bench: --all with a preset", ["bench", "--all", "--preset", "pixel-lru"]),
    ]


def file_cases(root: Path) -> list[tuple[str, list[str]]]:
    """Grid files, search files and the seed's model files that are not what they claim."""
    good = '[settings]\npreset = "quick"\nepochs = 1\n[grid]\nhidden = [32, 64]\n'
    grids = {
        "grid: unknown setting": good.replace("epochs", "epoch"),
        "grid: value out of range": good.replace("[32, 64]", "[32, -64]"),
        "grid: empty grid": good.replace("[32, 64]", "[]"),
        "grid: TOML syntax error": good.replace("epochs = 1", "epochs = = 1"),
        "grid: unknown table": good + "[grids]\nseed = [1]\n",
    }
    (root / "good.toml").write_text(good)
    cases = []
    for name, text in grids.items():
        path = root / f"{name.split(': ')[1].replace(' ', '-')}.toml"
        path.write_text(text)
        cases.append((name, ["sweep", str(path), "--out", str(root / "sweep")]))
    space = root / "space.toml"
    space.write_text('[settings]\npreset = "quick"\n[search]\nlr = {normal = [0, 1]}\n')
    cases.append(("tune: unknown distribution", ["tune", str(space), "--out", str(root / "tune")]))
    evil = root / "evil.model"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(root / "pwned").encode() + b"'\ntR.")
    cases.append(
        (
            "import-theano: a pickle that runs a command",
            ["import-theano", str(evil), "--rows", "28", "--out", str(root / "imp")],
        )
    )
    (root / "junk.model").write_bytes(b"\x00\x01junk")
    cases.append(
        (
            "import-theano: not a pickle",
            ["import-theano", str(root / "junk.model"), "--rows", "28", "--out", str(root / "imp2")],
        )
    )
    cases.append(
        (
            "sweep: no cluster at --ray-address",
            ["sweep", str(root / "good.toml"), "--out", str(root / "s2"), "--ray-address", "127.0.0.1:9"],
        )
    )
    return cases + compare_cases(root)


def compare_cases(root: Path) -> list[tuple[str, list[str]]]:
    """Folders compare cannot use, and a TensorBoard folder that cannot be made."""
    (root / "no-runs").mkdir()
    unfinished = root / "sweep-without-metrics" / "runs" / "vanilla-rows-0000000000"
    unfinished.mkdir(parents=True)
    (unfinished / "config.json").write_text('{"preset": "quick"}')  # a run that never finished an epoch
    (root / "a-file").write_text("x")
    quick = ["train", "--preset", "quick", "--subset", "1000", "--out", str(root / "tb-run")]
    return [
        ("compare: no such folder", ["compare", str(root / "nowhere")]),
        ("compare: a folder with no runs", ["compare", str(root / "no-runs")]),
        ("compare: no run with metrics", ["compare", str(root / "sweep-without-metrics")]),
        ("train: --tensorboard a file", [*quick, "--tensorboard", str(root / "a-file")]),
    ]


def export_cases(root: Path) -> list[tuple[str, list[str]]]:
    """Runs that ``export`` cannot write as ONNX. (A cell that cannot be exported is refused in one
    line too; every cell registered today exports, so tests/test_export.py registers one that does not.)"""
    from seqmnist import Config

    unfinished = root / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(Config.from_settings("quick").to_dict()))
    return [
        ("export: a run that did not finish", ["export", str(unfinished), "--onnx", str(root / "m.onnx")]),
        ("export: --check 0", ["export", str(unfinished), "--onnx", str(root / "m.onnx"), "--check", "0"]),
    ]


def row(name: str, args: list[str], root: Path) -> str:
    """One case run as a real process in ``root``: its table row (exit code and stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "seqmnist.cli", *args],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "SEQMNIST_DATA": str(SHARED)},
    )
    message = result.stderr.strip().replace(str(root), "$TMP").replace("|", "\\|")
    if "\n" in message:
        message = "MORE THAN ONE LINE: " + message.replace("\n", " / ")
    return f"| {name} | {result.returncode} | `{message}` |"


def saved_cases(root: Path) -> list[tuple[str, list[str]]]:
    """A permuted run (trained here, a few seconds) whose saved pixel order was edited."""
    run = root / "permuted"
    tiny = ["--task", "permuted", "--pixels-per-step", "28", "--epochs", "1", "--subset", "1000"]
    subprocess.run(
        [sys.executable, "-m", "seqmnist.cli", "train", "--preset", "quick", *tiny, "--out", str(run)],
        check=True,
        capture_output=True,
        env={**os.environ, "SEQMNIST_DATA": str(SHARED)},
    )
    saved = json.loads((run / "permutation.json").read_text())
    (run / "permutation.json").write_text(json.dumps({**saved, "order": saved["order"][:-1]}))
    return [("evaluate: a saved permutation of 783 pixels", ["evaluate", str(run)])]


def main() -> None:
    print("| bad input | exit | message |\n|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, args in cases(root):
            print(row(name, args, root), flush=True)
        ran = (root / "pwned").exists()
        print(f"\nThe crafted pickle's command {'RAN' if ran else 'never ran'} (no file {root.name}/pwned).")


if __name__ == "__main__":
    main()
