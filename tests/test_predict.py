"""`seqmnist predict` and the preprocessing behind it: real runs, real image files, real processes where
the exit code and the printed lines are what is tested."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import assert_one_line_error, run_cli
from seqmnist import predict as P
from seqmnist.cli import main
from seqmnist.errors import SeqmnistError
from seqmnist.images import MAX_BYTES, ImageRejected
from seqmnist.mnistify import stroke_width
from seqmnist.runs import load_run

DIGITS = Path(__file__).resolve().parents[1] / "docs" / "predict" / "digits"  # photographed and drawn digits
SAMPLE = 100  # MNIST test images checked against evaluate's predictions (the docs have 1,000)


# --- images made for the tests ----------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (8-bit gray) and whose data holds a few rows: tiny on
    disk, width * height bytes if anyone decoded it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming width x height, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def photographed(digit: np.ndarray, side: int = 360, seed: int = 0) -> Image.Image:
    """An MNIST digit as dark ink on grey paper under uneven light, with sensor noise, RGB."""
    rng = np.random.default_rng(seed)
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    ys, xs = np.mgrid[0:side, 0:side] / side
    paper = 0.62 + 0.22 * xs - 0.12 * ys - 0.15 * ((xs - 0.4) ** 2 + (ys - 0.6) ** 2)
    gray = paper * (1 - 0.75 * ink) + rng.normal(0, 0.025, ink.shape)
    rgb = np.stack([gray * 1.0, gray * 0.97, gray * 0.9], axis=-1)  # a warm paper, a blue-black ink
    return Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), "RGB")


def variants(digit: np.ndarray) -> dict[str, bytes]:
    """One MNIST digit in the forms people's images come in."""
    big = Image.fromarray(digit).resize((140, 140), Image.Resampling.BICUBIC)
    dark_on_light = Image.fromarray(255 - np.asarray(big))
    rgba = Image.new("RGBA", big.size, (0, 0, 0, 0))
    rgba.putalpha(big)  # black ink whose opacity is the digit, on a transparent canvas
    white_rgba = Image.new("RGBA", big.size, (255, 255, 255, 0))
    white_rgba.putalpha(big)  # white ink on a transparent canvas: must not vanish onto white
    sixteen = Image.fromarray(np.asarray(dark_on_light).astype(np.uint16) * 257)  # mode I;16
    return {
        "light-on-dark-large.png": encode(big),
        "dark-on-light.jpg": encode(dark_on_light.convert("RGB"), "JPEG", quality=85),
        "transparent-black-ink.png": encode(rgba),
        "transparent-white-ink.png": encode(white_rgba),
        "palette.gif": encode(
            dark_on_light.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "GIF"
        ),
        "sixteen-bit.png": encode(sixteen),
        "cmyk.jpg": encode(dark_on_light.convert("CMYK"), "JPEG", quality=90),
        "bitmap.bmp": encode(dark_on_light.convert("RGB"), "BMP"),
        "photographed.jpg": encode(photographed(digit), "JPEG", quality=80),
        "wide-canvas.png": encode(_on_wide_canvas(dark_on_light)),
    }


def _on_wide_canvas(digit: Image.Image) -> Image.Image:
    canvas = Image.new("L", (900, 400), 235)
    canvas.paste(digit, (600, 180))
    return canvas


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:28, 0:28]
    mass = image.sum()
    return float((image * ys).sum() / mass), float((image * xs).sum() / mass)


# --- runs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(quick_run) -> Path:
    """A small rows run made by the real CLI (conftest's quick_run)."""
    return quick_run


@pytest.fixture(scope="module")
def mnist_pngs(mnist, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mnist-png")
    paths = []
    for i, image in enumerate(mnist.test_x[:SAMPLE].numpy()):
        paths.append(folder / f"test-{i:04d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def predict_json(capsys, *args: str | Path) -> list[dict]:
    """`seqmnist predict --json` in this process (the model loads once, not per test)."""
    assert main(["predict", *map(str, args), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# --- MNIST itself: exactly evaluate's predictions -----------------------------------------------------


def test_mnist_pngs_give_evaluates_labels(run_dir, mnist, mnist_pngs, tmp_path):
    """MNIST's own images saved as PNG are read as they are: the labels are evaluate's, image for image,
    and every trace ends on its label."""
    result = run_cli("predict", run_dir, *mnist_pngs, "--json", "--save-input", tmp_path / "inputs")
    assert result.returncode == 0, result.stderr
    results = [json.loads(line) for line in result.stdout.splitlines()]
    expected = load_run(run_dir).read(mnist.test_x[:SAMPLE])["labels"].tolist()
    assert [r["label"] for r in results] == expected
    for path, r in zip(mnist_pngs, results, strict=True):
        assert r["file"] == str(path)
        assert r["steps"] == len(r["trace"]) == 28 and r["step_unit"] == "row"
        assert [s["step"] for s in r["trace"]] == list(range(1, 29))
        assert r["trace"][-1]["prediction"] == r["label"] == int(np.argmax(r["probabilities"]))
        assert r["trace"][-1]["running"] == r["probabilities"]
        assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert all(len(s["probabilities"]) == len(s["running"]) == 10 for s in r["trace"])
        assert all(s["prediction"] == int(np.argmax(s["running"])) for s in r["trace"])
        assert all(s["prediction"] == r["label"] for s in r["trace"][r["settled"] - 1 :])
    saved = [np.asarray(Image.open(tmp_path / "inputs" / p.name)) for p in mnist_pngs]
    assert all(np.array_equal(s, img) for s, img in zip(saved, mnist.test_x[:SAMPLE].numpy(), strict=True))


def test_text_output(run_dir, mnist_pngs, capsys):
    assert main(["predict", str(run_dir), str(mnist_pngs[0]), "--top", "2"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith(f"{mnist_pngs[0]}: ") and first.count("%") == 2
    assert second.startswith("  running prediction: ") and ("(rows " in second or "(row " in second)


# --- any image: MNIST-like inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 25, 61])  # 25: a bold 0 that covers a third of its image
def test_preprocessing_recovers_mnist_from_other_forms(mnist, index):
    """An MNIST digit turned into a photo, a transparent PNG, a palette GIF, 16-bit, CMYK... comes back
    as nearly the same 28x28 input: light on dark, in a 20-pixel box, centred by mass."""
    original = mnist.test_x[index].numpy()
    for name, data in variants(original).items():
        made = P.prepare(data)
        assert made.shape == (28, 28) and made.dtype == np.uint8, name
        rows, cols = np.nonzero(made > 30)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (19, 20, 21), name
        assert np.allclose(centre_of_mass(made.astype(float)), (14, 14), atol=0.75), name
        assert (made == 0).mean() > 0.5, name  # a black background, the paper and its noise gone
        assert made.max() == 255, name
        correlation = np.corrcoef(made.ravel().astype(float), original.ravel().astype(float))[0, 1]
        assert correlation > 0.8, (name, correlation)


def test_thin_pen_is_thickened_to_mnists_stroke():
    """A ball-point 7 on a big page: scaled to 20 pixels as it is, it would be a faint hairline."""
    page = Image.new("L", (1200, 1600), 225)
    ImageDraw.Draw(page).line([(400, 500), (800, 500), (520, 1100)], fill=40, width=5)
    made = P.prepare(encode(page, "JPEG", quality=90))
    assert stroke_width(made / 255.0) >= 1.4
    assert made.max() == 255


@pytest.mark.parametrize(
    ("name", "data", "status", "fragment"),
    [
        ("blank", encode(Image.new("L", (280, 280), 0)), 422, "no digit found"),
        ("white page", encode(Image.new("RGB", (600, 400), (240, 238, 230)), "JPEG"), 422, "no digit found"),
        ("noise", encode(Image.fromarray(np.random.default_rng(0).integers(90, 160, (300, 300), np.uint8))), 422,
         "no digit found"),
        ("empty", b"", 400, "empty file"),
        ("text", b"hello, I am not an image\n", 415, "not a PNG, JPEG, GIF, BMP or WebP image"),
        ("tiff", encode(Image.new("L", (50, 50)), "TIFF"), 415, "not a PNG, JPEG, GIF, BMP or WebP image"),
        ("huge png", png_header(20_000, 20_000), 413, "400,000,000 pixels is more than the limit of 40,000,000"),
        ("huge bmp", bmp_header(30_000, 30_000), 413, "pixels"),
        ("truncated", encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200), np.uint8)))[:3000],
         400, "a truncated or corrupt PNG image"),
        ("too many bytes", b"\x89PNG" + b"\x00" * (MAX_BYTES + 1), 413, "larger than the 10.0 MB limit"),
    ],
)  # fmt: skip
def test_bad_images_are_refused(name, data, status, fragment):
    with pytest.raises(ImageRejected) as caught:
        P.prepare(data)
    assert caught.value.status == status, name
    assert fragment in str(caught.value) and "\n" not in str(caught.value), name


def test_huge_image_is_refused_without_allocating_it(tmp_path):
    """20,000 x 20,000 pixels would be 400 MB decoded: the refusal must come from the header alone."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20_000, 20_000))
    script = (
        "import resource, sys\n"
        "from seqmnist.images import ImageRejected\nfrom seqmnist.predict import prepare_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    prepare_file(sys.argv[1])\nexcept ImageRejected as exc:\n    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, check=True).stdout
    message, grown_mb = out.splitlines()
    assert "400,000,000 pixels is more than the limit of 40,000,000" in message
    assert int(grown_mb) < 20


def test_cli_bad_files_are_one_line_with_exit_2(run_dir, mnist_pngs, tmp_path, capsys):
    """Each bad file gets one line naming it, the good one its answer, and predict exits with code 2."""
    noise = np.random.default_rng(2).integers(0, 255, (300, 300, 3), np.uint8)
    bad = {
        "empty.png": (b"", "empty file"),
        "notes.txt": (b"not an image", "not a PNG, JPEG, GIF, BMP or WebP image"),
        "huge.png": (png_header(20_000, 20_000), "400,000,000 pixels is more than the limit of 40,000,000"),
        "truncated.jpg": (encode(Image.fromarray(noise), "JPEG")[:5000], "a truncated or corrupt JPEG image"),
        "blank.png": (encode(Image.new("L", (100, 100), 255)), "no digit found"),
    }
    for name, (data, _) in bad.items():
        (tmp_path / name).write_bytes(data)
    with open(tmp_path / "fifty-mb.png", "wb") as f:  # sparse: refused by its size, never read
        f.truncate(50 * 2**20)
    (tmp_path / "folder").mkdir()
    messages = {
        **{name: fragment for name, (_, fragment) in bad.items()},
        "fifty-mb.png": "50.0 MB is larger than the 10.0 MB limit",
        "folder": "is a directory, not an image",
        "missing.png": "file not found",
    }
    good = mnist_pngs[0]
    result = run_cli("predict", run_dir, good, tmp_path / "notes.txt")  # one real process: exit code and stderr
    assert_one_line_error(result, f"{tmp_path / 'notes.txt'}: not a PNG, JPEG, GIF, BMP or WebP image")
    assert result.stdout.startswith(f"{good}: ")
    for name, fragment in messages.items():  # the rest in this process, the model loaded once
        assert main(["predict", str(run_dir), str(good), str(tmp_path / name)]) == 2, name
        out, err = capsys.readouterr()
        assert out.startswith(f"{good}: ") and err.startswith(f"seqmnist: error: {tmp_path / name}: {fragment}")
        assert err.count("\n") == 1, err
    assert main(["predict", str(run_dir), str(good), "--top", "0"]) == 2
    assert capsys.readouterr().err == "seqmnist: error: --top must be in 1..10 (got 0)\n"


def test_save_input_names_never_collide(tmp_path):
    images = [np.full((28, 28), v, np.uint8) for v in (10, 20, 30)]
    paths = P.save_inputs(tmp_path / "out", ["a/seven.png", "b/seven.jpg", "eight.gif"], images)
    assert [p.name for p in paths] == ["seven.png", "seven-2.png", "eight.png"]
    assert [int(np.asarray(Image.open(p)).max()) for p in paths] == [10, 20, 30]


# --- every kind of run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_runs(mnist_dir, seed_models_dir, tmp_path_factory) -> dict[str, Path]:
    """A pixel-task run (16 pixels a step, mean-logits), a permuted one (a ReLU cell, mean-softmax) and
    the seed's own model imported, all made by the CLI. (The cell does not matter to predict, which
    reads through TrainedModel.read; an LSTM costs this suite 15 s more, and was checked by hand.)"""
    root = tmp_path_factory.mktemp("runs")
    env = {"SEQMNIST_DATA": str(mnist_dir)}
    tiny = ["--preset", "quick", "--epochs", "1", "--subset", "1000"]
    commands = {
        "pixel": ["train", *tiny, "--task", "pixel", "--pixels-per-step", "16", "--readout", "mean-logits"],
        "permuted": ["train", *tiny, "--task", "permuted", "--pixels-per-step", "28", "--cell", "relu",
                     "--readout", "mean-softmax"],
        "seed": ["import-theano", seed_models_dir / "rnn_step28.model", "--rows", "28"],
    }  # fmt: skip
    for name, command in commands.items():
        result = run_cli(*command, "--out", root / name, env=env)
        assert result.returncode == 0, (name, result.stderr)
    return {name: root / name for name in commands}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "steps", "unit"), [("pixel", 49, "step"), ("permuted", 28, "step"), ("seed", 28, "row")]
)
def test_every_kind_of_run(other_runs, mnist, mnist_pngs, capsys, name, steps, unit):
    run = other_runs[name]
    results = predict_json(capsys, run, *mnist_pngs[:20])
    expected = load_run(run).read(mnist.test_x[:20])["labels"].tolist()
    assert [r["label"] for r in results] == expected
    assert {(r["steps"], r["step_unit"], len(r["trace"])) for r in results} == {(steps, unit, steps)}
    assert all(r["trace"][-1]["prediction"] == r["label"] for r in results)
    photo = mnist_pngs[0].parent / "photo.jpg"
    photo.write_bytes(variants(mnist.test_x[0].numpy())["photographed.jpg"])
    assert predict_json(capsys, run, photo)[0]["steps"] == steps


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["wrong length", "repeated pixel", "not a list", "floats", "mixed types"])
def test_a_saved_permutation_that_is_not_one_is_one_line(other_runs, mnist_dir, mnist_pngs, tmp_path, damage):
    """A permuted run's permutation.json edited to 783 pixels, a repeated pixel, no list, floats or a
    string among the numbers: evaluate and predict refuse it in one line, exit 2, and leave the file as it was."""
    run = tmp_path / "permuted"
    shutil.copytree(other_runs["permuted"], run)
    saved = json.loads((run / "permutation.json").read_text())
    order = saved["order"]
    saved["order"] = {
        "wrong length": order[:-1],
        "repeated pixel": [order[0], *order[:-1]],
        "not a list": 7,
        "floats": [float(i) for i in order],
        "mixed types": [str(order[0]), *order[1:]],
    }[damage]
    text = json.dumps(saved)
    (run / "permutation.json").write_text(text)
    for command in (["evaluate", run], ["predict", run, mnist_pngs[0]]):
        result = run_cli(*command, env={"SEQMNIST_DATA": str(mnist_dir)})
        assert_one_line_error(result, "permutation.json: not a permutation of the 784 pixels")
    assert (run / "permutation.json").read_text() == text


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_corrupted_files_are_refused_not_crashed_on(fmt):
    """A file with a few random bytes changed decodes, or is refused with a status: never another error."""
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)), fmt)
    statuses = set()
    for _ in range(100):
        damaged = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            damaged[rng.integers(0, len(damaged))] = rng.integers(0, 256)
        try:
            P.prepare(bytes(damaged))
            statuses.add(200)
        except ImageRejected as exc:
            statuses.add(exc.status)
    assert statuses <= {200, 400, 413, 415, 422} and statuses & {400, 415}


def read_in_threads(trained, groups: list, at_once: bool, repeats: int = 1) -> list[dict]:
    """Each group of images read by ``trained.read`` in a thread of its own: all at once, or one
    thread after another (each thread reads its group ``repeats`` times; the last reading counts)."""
    results: list = [None] * len(groups)

    def read(i: int) -> None:
        for _ in range(repeats):
            results[i] = trained.read(groups[i])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(groups))]
    for thread in threads:
        thread.start()
        if not at_once:
            thread.join()
    for thread in threads:
        thread.join()
    return results


def test_four_threads_reading_one_model_get_what_one_thread_gets(quick_run, mnist):
    # Each thread has its own engine buffers: none overwrites another's logits mid-read.
    trained = load_run(quick_run)
    groups = [mnist.test_x[i * 100 : (i + 1) * 100] for i in range(4)]
    alone = read_in_threads(trained, groups, at_once=False)
    together = read_in_threads(trained, groups, at_once=True, repeats=5)
    for one, four in zip(alone, together, strict=True):
        assert all(torch.equal(one[key], four[key]) for key in one)


def test_the_python_api_predicts_a_file_a_pil_image_and_an_array_of_any_size(quick_run):
    """load_run(DIR).predict: what `seqmnist predict` makes of an image, from Python; a wrong shape or
    type is a SeqmnistError saying what is taken."""
    trained = load_run(quick_run)
    photo = DIGITS / "7-written-1.jpg"
    from_file = trained.predict(photo)
    assert from_file["label"] == 7 and from_file["probabilities"].shape == (10,)
    assert from_file["running"].shape == (28, 10)
    assert torch.allclose(from_file["running"][-1], from_file["probabilities"])
    assert trained.predict(Image.open(photo))["label"] == 7 == trained.predict(str(photo))["label"]
    big = np.zeros((200, 200), np.float32)
    big[40:160, 90:110] = 1.0  # a thick vertical stroke: a one
    assert trained.predict(big)["label"] == 1
    assert trained.predict(torch.from_numpy(big * 255))["label"] == 1
    with pytest.raises(SeqmnistError, match=r"an array \(height, width\) .* got an array of shape \(2, 3, 28, 28\)"):
        trained.predict(torch.zeros(2, 3, 28, 28))
    with pytest.raises(SeqmnistError, match="got list"):
        trained.predict([[0, 1], [1, 0]])
    with pytest.raises(SeqmnistError, match=r"read takes MNIST's images, a tensor \(N, 28, 28\) .*got \(200, 200\)"):
        trained.read(torch.from_numpy(big))
