"""Digits of our own, to see what a trained model makes of images that are not MNIST's.

Three kinds, ten digits each, the true digit first in every file name (``7-written-2.jpg``):

    drawn      drawn stroke by stroke on `seqmnist serve`'s page in Chromium, saved as the page
               uploads them (white on black PNGs)
    written    the same kind of strokes "written" with a pen and "photographed": thin ball-point to
               thick marker, black, blue, red or pencil ink, on grey, cream or white paper under uneven
               light, with noise and blur, as JPEG, PNG or BMP of 64 to 2,400 pixels; one in chalk
    printed    typed in a dozen fonts, in every mode an image comes in: RGBA on a transparent
               background, palette GIF, 16-bit PNG, CMYK JPEG, BMP, light on dark, coloured

    python scripts/own_digits.py make DIR            # written and printed (Pillow; fonts below)
    python scripts/own_digits.py draw DIR URL        # drawn, on a page `seqmnist serve RUN` serves
    python scripts/own_digits.py score RUN DIR --inputs OUT --sheet SHEET.png

The fonts are Debian's fonts-dejavu-core, fonts-liberation, fonts-urw-base35 and fonts-comic-neue; a
font that is missing is left out. `score` runs `seqmnist predict --json --save-input` on every image,
prints the accuracy of each kind, and draws a contact sheet: each image beside the 28x28 input the
model read and its answer.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# --- the strokes: a digit as a person writes it, in a unit box (x right, y down) ------------------------

Stroke = tuple[list[tuple[float, float]], bool]  # points, and whether to draw a smooth curve through them


def ellipse(cx: float, cy: float, rx: float, ry: float, turns: float = 1.06) -> list[tuple[float, float]]:
    steps = 24
    return [
        (cx + rx * math.sin(2 * math.pi * turns * i / steps), cy - ry * math.cos(2 * math.pi * turns * i / steps))
        for i in range(steps + 1)
    ]


STYLES: dict[int, list[list[Stroke]]] = {
    0: [[(ellipse(0.5, 0.5, 0.28, 0.44), True)], [(ellipse(0.5, 0.5, 0.33, 0.45, 1.0), True)]],
    1: [[([(0.56, 0.06), (0.48, 0.94)], False)], [([(0.32, 0.26), (0.56, 0.06), (0.5, 0.94)], False)]],
    2: [
        [([(0.2, 0.28), (0.34, 0.1), (0.55, 0.05), (0.74, 0.16), (0.75, 0.36), (0.58, 0.58), (0.2, 0.92)], True),
         ([(0.2, 0.92), (0.84, 0.92)], False)],
        [([(0.24, 0.22), (0.48, 0.05), (0.72, 0.14), (0.7, 0.4), (0.4, 0.7), (0.18, 0.94)], True),
         ([(0.18, 0.94), (0.5, 0.88), (0.86, 0.94)], True)],
    ],
    3: [
        [([(0.22, 0.14), (0.46, 0.05), (0.7, 0.12), (0.74, 0.28), (0.6, 0.42), (0.42, 0.48), (0.64, 0.53),
           (0.78, 0.68), (0.72, 0.86), (0.5, 0.95), (0.22, 0.88)], True)],
        [([(0.2, 0.08), (0.78, 0.08), (0.46, 0.42)], False),
         ([(0.46, 0.42), (0.7, 0.5), (0.8, 0.7), (0.66, 0.9), (0.42, 0.95), (0.2, 0.86)], True)],
    ],
    4: [
        [([(0.58, 0.06), (0.16, 0.64), (0.86, 0.64)], False), ([(0.62, 0.3), (0.62, 0.95)], False)],
        [([(0.24, 0.06), (0.2, 0.56), (0.82, 0.56)], False), ([(0.68, 0.08), (0.66, 0.95)], False)],
    ],
    5: [
        [([(0.78, 0.06), (0.32, 0.06), (0.27, 0.44)], False),
         ([(0.27, 0.44), (0.5, 0.38), (0.72, 0.48), (0.78, 0.7), (0.66, 0.9), (0.44, 0.95), (0.2, 0.86)], True)],
        [([(0.32, 0.06), (0.28, 0.46), (0.52, 0.4), (0.74, 0.52), (0.76, 0.76), (0.56, 0.94), (0.22, 0.88)], True),
         ([(0.32, 0.07), (0.8, 0.05)], False)],
    ],
    6: [
        [([(0.68, 0.06), (0.45, 0.22), (0.3, 0.48), (0.26, 0.72), (0.36, 0.92), (0.56, 0.95), (0.72, 0.82),
           (0.72, 0.62), (0.56, 0.5), (0.38, 0.54), (0.27, 0.68)], True)],
        [([(0.62, 0.05), (0.36, 0.36), (0.26, 0.66), (0.4, 0.94), (0.66, 0.9), (0.72, 0.68), (0.52, 0.56),
           (0.3, 0.66)], True)],
    ],
    7: [
        [([(0.16, 0.08), (0.84, 0.08), (0.42, 0.94)], False)],
        [([(0.18, 0.12), (0.82, 0.06), (0.5, 0.5), (0.4, 0.94)], True), ([(0.36, 0.5), (0.72, 0.5)], False)],
    ],
    8: [
        [([(0.68, 0.16), (0.5, 0.05), (0.3, 0.14), (0.32, 0.32), (0.5, 0.46), (0.7, 0.6), (0.74, 0.8),
           (0.52, 0.95), (0.28, 0.82), (0.32, 0.6), (0.5, 0.46), (0.66, 0.32), (0.68, 0.16)], True)],
        [(ellipse(0.5, 0.26, 0.2, 0.2, 1.0), True), (ellipse(0.5, 0.7, 0.25, 0.25, 1.0), True)],
    ],
    9: [
        [([(0.72, 0.22), (0.56, 0.06), (0.34, 0.08), (0.26, 0.26), (0.36, 0.44), (0.56, 0.46), (0.72, 0.3),
           (0.72, 0.16), (0.7, 0.6), (0.64, 0.95)], True)],
        [(ellipse(0.48, 0.28, 0.22, 0.22, 1.0), True), ([(0.7, 0.26), (0.66, 0.95)], False)],
    ],
}  # fmt: skip


def catmull_rom(points: list[tuple[float, float]], per_segment: int = 8) -> list[tuple[float, float]]:
    """A smooth curve through the points, as a hand would draw it."""
    p = [points[0], *points, points[-1]]
    curve = [points[0]]
    for i in range(1, len(p) - 2):
        for k in range(1, per_segment + 1):
            t = k / per_segment
            curve.append(
                tuple(
                    0.5
                    * (
                        2 * p[i][d]
                        + (-p[i - 1][d] + p[i + 1][d]) * t
                        + (2 * p[i - 1][d] - 5 * p[i][d] + 4 * p[i + 1][d] - p[i + 2][d]) * t * t
                        + (-p[i - 1][d] + 3 * p[i][d] - 3 * p[i + 1][d] + p[i + 2][d]) * t * t * t
                    )
                    for d in (0, 1)
                )
            )
    return curve


def densify(points: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    out = [points[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        n = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return out


def hand(strokes: list[Stroke], rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """The strokes as one person's hand writes them: slanted, turned a little, narrower or wider, and
    never quite the same twice."""
    slant = rng.uniform(-0.3, 0.1)
    angle = math.radians(rng.uniform(-7, 7))
    width = rng.uniform(0.8, 1.1)
    cos, sin = math.cos(angle), math.sin(angle)
    out = []
    for points, smooth in strokes:
        shaky = [(x + rng.normal(0, 0.012), y + rng.normal(0, 0.012)) for x, y in points]
        line = catmull_rom(shaky) if smooth else shaky
        moved = []
        for x, y in line:
            x, y = 0.5 + (x - 0.5) * width + slant * (y - 0.5), y
            moved.append((0.5 + (x - 0.5) * cos - (y - 0.5) * sin, 0.5 + (x - 0.5) * sin + (y - 0.5) * cos))
        out.append(moved)
    return out


# --- written and photographed ------------------------------------------------------------------------


INKS = {"black": (25, 25, 30), "blue": (30, 45, 125), "red": (135, 25, 30), "pencil": (95, 95, 100)}
PAPERS = {"white": (238, 238, 235), "grey": (185, 185, 180), "cream": (232, 222, 195), "dim": (150, 148, 140)}


def ink_mask(lines: list[list[tuple[float, float]]], size: tuple[int, int], box: tuple, pen: float) -> np.ndarray:
    """Antialiased coverage (0..1) of round-pen strokes whose unit box lands on ``box`` (x, y, side)."""
    factor = 4 if max(size) < 400 else 2 if max(size) < 1200 else 1
    big = Image.new("L", (size[0] * factor, size[1] * factor), 0)
    draw = ImageDraw.Draw(big)
    x0, y0, side = (v * factor for v in box)
    radius = max(0.5, pen * factor / 2)
    for line in lines:
        for x, y in densify([(x0 + x * side, y0 + y * side) for x, y in line], max(radius / 2, 0.5)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    small = big.resize(size, Image.Resampling.BOX) if factor > 1 else big
    return np.asarray(small, np.float32) / 255


def lighting(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A lamp's uneven light over the page: a gradient and a soft fall-off, 0.75..1.05."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    xs, ys = xs / width, ys / height
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    light = 1 + gx * (xs - 0.5) + gy * (ys - 0.5) - rng.uniform(0.05, 0.2) * ((xs - cx) ** 2 + (ys - cy) ** 2)
    return np.clip(light, 0.7, 1.05)[..., None]


def written(digit: int, style: int, n: int, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    """One digit written and photographed; the image, its file format and how it was made."""
    side = int(rng.choice([64, 96, 160, 320, 640, 1200, 2400]))
    size = (int(side * rng.uniform(0.8, 1.5)), side)
    height = side * rng.uniform(0.35, 0.8)
    x0 = rng.uniform(0.15 * height, max(0.15 * height, size[0] - 1.15 * height))
    box = (x0, rng.uniform(0.05, 0.95) * (side - height), height)
    pen = max(1.0, height * rng.choice([0.025, 0.05, 0.09, 0.14]))
    ink_name, paper_name = rng.choice(list(INKS)), rng.choice(list(PAPERS))
    mask = ink_mask(hand(STYLES[digit][style], rng), size, box, pen)[..., None]
    paper = np.array(PAPERS[paper_name], np.float32)
    ink = np.array(INKS[ink_name], np.float32)
    pixels = (paper * (1 - mask) + ink * mask) * lighting(size, rng)
    pixels += rng.normal(0, rng.uniform(2, 8), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if side >= 320:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5) * side / 640))
    fmt = "jpg" if n % 3 != 2 or side > 160 else ("png" if digit % 2 else "bmp")  # big ones as a camera saves them
    made = {"size": f"{size[0]}x{size[1]}", "pen": round(pen, 1), "ink": ink_name, "paper": paper_name}
    return image, fmt, made


def chalk(digit: int, rng: np.random.Generator) -> Image.Image:
    """Light chalk on a dark board: the one kind that is light on dark."""
    size = (300, 240)
    mask = ink_mask(hand(STYLES[digit][0], rng), size, (90, 30, 180), 12)[..., None]
    board, chalk_colour = np.array([40, 58, 50], np.float32), np.array([225, 228, 220], np.float32)
    pixels = board * (1 - mask) + chalk_colour * mask * rng.uniform(0.8, 1, mask.shape)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def hard(digit: int, n: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A harder photo, one trouble each: a small digit in a big picture, pencil on dim paper under a
    steep lamp, ruled paper, a shadow's edge across the page, or heavy JPEG compression."""
    trouble = ["small", "pencil", "ruled", "shadow", "jpeg"][(digit * 2 + n) % 5]
    size = (1600, 1200) if trouble == "small" else (480, 400)
    height = 170 if trouble == "small" else rng.uniform(200, 300)
    box = (rng.uniform(100, size[0] - 1.2 * height), rng.uniform(20, size[1] - height - 20), height)
    pen = height * (0.03 if trouble in ("small", "pencil") else 0.08)
    mask = ink_mask(hand(STYLES[digit][n % 2], rng), size, box, pen)[..., None]
    ink_colour = np.array(INKS["pencil" if trouble == "pencil" else "blue"], np.float32)
    paper = np.array(PAPERS["dim" if trouble == "pencil" else "white"], np.float32)
    pixels = paper * np.ones((size[1], size[0], 1), np.float32)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    if trouble == "ruled":
        ruled = (ys % 36 < 2)[..., None]
        pixels = np.where(ruled, np.array([170, 190, 225], np.float32), pixels)
    pixels = pixels * (1 - mask * (0.55 if trouble == "pencil" else 1)) + ink_colour * mask * (trouble != "pencil")
    light = lighting(size, rng)
    if trouble == "pencil":
        light = light * (0.65 + 0.4 * xs[..., None] / size[0])
    if trouble == "shadow":
        light = light * (1 - 0.35 / (1 + np.exp(-(xs - 0.3 * ys - size[0] * 0.45) / 6)))[..., None]
    pixels = pixels * light + rng.normal(0, 4, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    image.info["quality"] = 30 if trouble == "jpeg" else 82
    return image, trouble


# --- printed -------------------------------------------------------------------------------------------------


FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "LiberationSerif-Regular.ttf",
    "LiberationSans-Bold.ttf", "URWGothic-Book.otf", "C059-Roman.otf", "P052-Italic.otf", "Z003-MediumItalic.otf",
    "ComicNeue-Regular.otf", "URWBookman-Light.otf",
]  # fmt: skip
MODES = ["rgba", "gif", "sixteen", "cmyk", "bmp", "inverse", "colour", "tiny", "large", "gray"]


def find_font(name: str) -> Path | None:
    found = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True).stdout.split()
    return next((Path(f) for f in found if Path(f).name == name), None)


def printed(digit: int, font: Path, mode: str) -> tuple[Image.Image, str]:
    """A digit typed in ``font``, in one of the modes an image comes in."""
    size = {"tiny": 40, "large": 1400}.get(mode, 200)
    text = ImageFont.truetype(str(font), int(size * 0.7))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=text)
    draw.text(((size - right - left) / 2, (size - bottom - top) / 2), str(digit), fill=255, font=text)
    ink = canvas  # white on black: the digit's coverage
    if mode == "rgba":
        image = Image.new("RGBA", ink.size, (0, 0, 0, 0))
        image.putalpha(ink)
        return image, "png"
    dark_on_light = Image.fromarray(255 - np.asarray(ink))
    if mode == "gif":
        return dark_on_light.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "gif"
    if mode == "sixteen":
        return Image.fromarray(np.asarray(dark_on_light).astype(np.uint16) * 257), "png"
    if mode == "cmyk":
        return dark_on_light.convert("CMYK"), "jpg"
    if mode == "bmp":
        return dark_on_light.convert("RGB"), "bmp"
    if mode == "inverse":
        return Image.merge("RGB", [ink.point(lambda v: 30 + v * 0.8)] * 3), "png"
    if mode == "colour":
        coverage = np.asarray(ink, np.float32)[..., None] / 255
        pixels = np.array([250, 235, 140]) * (1 - coverage) + np.array([30, 60, 160]) * coverage
        return Image.fromarray(pixels.astype(np.uint8), "RGB"), "jpg"
    return dark_on_light, "png"


# --- the commands --------------------------------------------------------------------------------------------


def save(image: Image.Image, path: Path) -> None:
    options = {"quality": image.info.get("quality", 82)} if path.suffix == ".jpg" else {}
    image.save(path, **options)


def make(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    notes = {}
    for digit in range(10):
        for n in range(3):
            image, fmt, made = written(digit, n % 2, n, rng)
            path = out / f"{digit}-written-{n + 1}.{fmt}"
            save(image, path)
            notes[path.name] = made
        save(chalk(digit, rng), out / f"{digit}-written-chalk.jpg")
        for n in range(2):
            image, trouble = hard(digit, n, rng)
            save(image, out / f"{digit}-hard-{trouble}.jpg")
    fonts = [f for f in (find_font(name) for name in FONTS) if f]
    for digit in range(10):
        for k in range(3):
            font = fonts[(digit * 3 + k) % len(fonts)]
            mode = MODES[(digit + 3 * k) % len(MODES)]
            image, fmt = printed(digit, font, mode)
            save(image, out / f"{digit}-printed-{font.stem}-{mode}.{fmt}")
    (out / "written.json").write_text(json.dumps(notes, indent=1) + "\n")
    counts = {kind: len(list(out.glob(f"*-{kind}-*"))) for kind in ("written", "hard", "printed")}
    print(", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" in {out}")


def draw(out: Path, url: str) -> None:
    """Draw every digit in both styles on the page, as a person would (mouse, pen or finger), and keep
    the image the page uploads and the answer it shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    rng = np.random.default_rng(7)
    answers = {}
    try:
        driver.get(url)
        state = "return document.body.dataset.state"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(state) == "idle")
        pad = driver.find_element("id", "pad")
        half = pad.size["width"] / 2
        for digit in range(10):
            for style in (0, 1):
                driver.find_element("id", "clear").click()
                height = rng.uniform(150, 230)
                x0, y0 = rng.uniform(20, 260 - height * 0.9), rng.uniform(15, 265 - height)
                kind = ["mouse", "pen", "touch"][(digit + style) % 3]
                for line in hand(STYLES[digit][style], rng):
                    builder = ActionBuilder(driver, mouse=PointerInput(kind, f"{kind}{time.time_ns()}"), duration=10)
                    pointer = builder.pointer_action
                    points = densify([(x0 + x * height, y0 + y * height) for x, y in line], 10)
                    pointer.move_to(pad, points[0][0] * half / 140 - half, points[0][1] * half / 140 - half)
                    pointer.pointer_down()
                    for x, y in points[1:]:
                        pointer.move_to(pad, x * half / 140 - half, y * half / 140 - half)
                    pointer.pointer_up()
                    builder.perform()
                time.sleep(0.6)
                WebDriverWait(driver, 30).until(lambda d: d.execute_script(state) == "done")
                data = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
                name = f"{digit}-drawn-{'ab'[style]}.png"
                (out / name).write_bytes(base64.b64decode(data.split(",", 1)[1]))
                answers[name] = int(driver.find_element("id", "label").get_attribute("data-label"))
    finally:
        driver.quit()
    (out / "drawn.json").write_text(json.dumps({"page_answers": answers}, indent=1) + "\n")
    right = sum(int(name[0]) == label for name, label in answers.items())
    print(f"drew {len(answers)} digits on the page; it read {right} right")


def score(run: Path, folder: Path, inputs: Path, sheet: Path) -> None:
    images = sorted(p for p in folder.iterdir() if re.match(r"\d-", p.name) and p.suffix != ".json")
    command = [sys.executable, "-m", "seqmnist.cli", "predict", str(run), *map(str, images)]
    result = subprocess.run([*command, "--json", "--save-input", str(inputs)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    kinds: dict[str, list[bool]] = {}
    for path, answer in zip(images, answers, strict=True):
        kinds.setdefault(path.name.split("-")[1], []).append(answer["label"] == int(path.name[0]))
    for kind, right in kinds.items():
        print(f"{kind:8} {sum(right):3}/{len(right):3} = {sum(right) / len(right):.0%}")
    every = [r for right in kinds.values() for r in right]
    print(f"{'all':8} {sum(every):3}/{len(every):3} = {sum(every) / len(every):.0%}")
    contact_sheet(images, answers, inputs, sheet)


def contact_sheet(images: list[Path], answers: list[dict], inputs: Path, sheet: Path, columns: int = 8) -> None:
    """Each image (shrunk), the 28x28 input the model read (x2), and its answer: green right, red wrong."""
    cell_w, cell_h = 150, 92
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("RGB", (columns * cell_w + 10, rows * cell_h + 10), (250, 250, 248))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(find_font("DejaVuSans.ttf")), 12)
    bold = ImageFont.truetype(str(find_font("DejaVuSans-Bold.ttf")), 20)
    for i, (path, answer) in enumerate(zip(images, answers, strict=True)):
        x, y = 10 + (i % columns) * cell_w, 8 + (i // columns) * cell_h
        thumb = Image.open(path)
        thumb.seek(0)
        thumb = thumb.convert("RGBA")
        backing = Image.new("RGBA", thumb.size, (200, 200, 200, 255))
        thumb = Image.alpha_composite(backing, thumb).convert("RGB")
        thumb.thumbnail((56, 56))
        canvas.paste(thumb, (x, y + (56 - thumb.height) // 2))
        made = Image.open(inputs / f"{path.stem}.png").resize((56, 56), Image.Resampling.NEAREST)
        canvas.paste(made.convert("RGB"), (x + 60, y))
        right = answer["label"] == int(path.name[0])
        draw.text((x + 121, y + 14), str(answer["label"]), fill=(20, 140, 60) if right else (200, 40, 40), font=bold)
        draw.text((x, y + 60), path.stem[2:][:22], fill=(90, 90, 90), font=font)
    canvas.save(sheet)
    print(f"contact sheet: {sheet}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make")
    made.add_argument("out", type=Path)
    drawn = commands.add_parser("draw")
    drawn.add_argument("out", type=Path)
    drawn.add_argument("url")
    scored = commands.add_parser("score")
    scored.add_argument("run", type=Path)
    scored.add_argument("folder", type=Path)
    scored.add_argument("--inputs", type=Path, required=True)
    scored.add_argument("--sheet", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "make":
        make(args.out)
    elif args.command == "draw":
        draw(args.out, args.url)
    else:
        score(args.run, args.folder, args.inputs, args.sheet)


if __name__ == "__main__":
    main()
