"""MNIST's own test images through `seqmnist predict`, against what the run's model says of them directly.

    python scripts/mnist_agreement.py RUN_DIR [N]     # the first N test images (1,000)

Saves the images as PNG files, runs `seqmnist predict RUN_DIR *.png --json` as a user would, and checks
that every label is the label `evaluate` gives the same image (`load_run(RUN_DIR).read`, the model
evaluate runs), that every trace ends on its label, and that the labels' accuracy is evaluate's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from seqmnist import MNIST, load_run
from seqmnist.errors import SeqmnistError


def main() -> None:
    run = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    try:
        data = MNIST.load()
        images, truth = data.test_x[:count], data.test_y[:count]
        expected = load_run(run).read(images)["labels"].tolist()
    except SeqmnistError as exc:
        print(f"mnist_agreement: error: {exc}", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"test-{i:05d}.png" for i in range(count)]
        for path, image in zip(paths, images.numpy(), strict=True):
            Image.fromarray(image).save(path)
        start = time.perf_counter()
        command = [sys.executable, "-m", "seqmnist.cli", "predict", str(run), *map(str, paths), "--json"]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    labels = [a["label"] for a in answers]
    same = sum(a == b for a, b in zip(labels, expected, strict=True))
    ends = sum(a["trace"][-1]["prediction"] == a["label"] for a in answers)
    right = sum(a == int(t) for a, t in zip(labels, truth, strict=True))
    right_directly = sum(a == int(t) for a, t in zip(expected, truth, strict=True))
    print(f"{count} MNIST test images as PNG through `seqmnist predict` ({seconds:.1f} s):")
    print(f"  labels identical to evaluate's: {same}/{count}")
    print(f"  traces whose last running prediction is the label: {ends}/{count}")
    print(f"  accuracy: predict {right / count:.4f}, evaluate's model {right_directly / count:.4f}")
    sys.exit(0 if same == ends == count else 1)


if __name__ == "__main__":
    main()
