"""Any picture of one digit made to look like MNIST, the way MNIST was made (LeCun et al.: "size
normalized to fit in a 20x20 pixel box while preserving their aspect ratio ... centered in a 28x28
image by computing the center of mass of the pixels"):

    1. grayscale: transparent pixels composited onto a background that contrasts with the ink,
       16-bit and CMYK images scaled, a photo's EXIF orientation applied
    2. the paper: a smooth surface (a quadratic in x and y) fitted to the image with the ink left
       out, so grey paper and uneven lighting are subtracted, not mistaken for ink
    3. polarity from the image: dark ink on light paper is inverted to light on dark
    4. the ink's contrast scaled to 1, and the paper's noise (a few of its standard deviations) cut off;
       the lines of ruled or squared paper wiped
    5. cropped to the digit, thin pen strokes thickened to MNIST's stroke width (MNIST's
       writers used a thick pen; a ball-point photographed at 12 MP would vanish in 20 pixels)
    6. scaled so its larger side is 20 pixels, keeping its aspect ratio (antialiased)
    7. put in 28x28 with its centre of mass at the centre (14, 14)

A 28x28 image that is already light on dark (MNIST's own format) is taken as it is, so MNIST's own
images, saved as PNG, give exactly the predictions of the run's ``evaluate``. A picture with no digit
in it is an :class:`~seqmnist.images.ImageRejected` (422).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .images import WORK_SIDE, ImageRejected, has_alpha
from .sequence import SIDE

BOX = 20  # MNIST's digits fit a 20x20 box ...
CENTRE = 14.0  # ... centred by mass at (14, 14) of 28x28 (MNIST's test set: 13.99, 14.01)
STROKE = 2.0  # MNIST's pen, as 2 * area / perimeter of the ink (test set median 1.84, 10-90%: 1.4-2.6)
THIN = 1.5  # strokes thinner than this (in 28x28 pixels) are thickened to STROKE
STEP_WORK = 160  # thickness is measured and mended at this size, before the final scaling


# --- grayscale --------------------------------------------------------------------------------------


def as_image(picture: object) -> Image.Image:
    """What the Python API is handed, as a PIL image: a PIL image as it is, an array (a NumPy array or
    a tensor) of shape (height, width) in 0..1 or 0..255, or (height, width, 3 or 4) bytes; anything
    else is one line saying what is taken."""
    if isinstance(picture, Image.Image):
        return picture
    if hasattr(picture, "detach"):  # a torch tensor
        picture = picture.detach().cpu().numpy()
    array = np.asarray(picture) if isinstance(picture, np.ndarray) else None
    taken = "a path, a PIL image, or an array (height, width) or (height, width, 3 or 4)"
    if array is None or array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise ImageRejected(f"an image must be {taken}; got {type(picture).__name__}")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if array.ndim != 2:
        raise ImageRejected(f"an image must be {taken}; got an array of shape {tuple(array.shape)}")
    gray = array.astype(np.float32)
    return Image.fromarray(gray / 255.0 if gray.max() > 1 else gray, mode="F")


def to_gray(image: Image.Image) -> np.ndarray:
    """Gray levels in 0..1, (height, width) float32, at most WORK_SIDE on a side."""
    if image.getexif().get(0x0112, 1) != 1:  # a photo taken sideways
        image = ImageOps.exif_transpose(image)
    if image.mode == "P":  # a palette's indices must not be averaged: expand them first
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    factor = math.ceil(max(image.size) / WORK_SIDE)
    if factor > 1 and image.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        image = image.reduce(factor)
    if image.mode.startswith("I"):  # 16-bit grayscale ("I;16") or 32-bit integers ("I")
        values = np.asarray(image, dtype=np.float32)
        wide = image.mode.startswith("I;16") or values.max() > 255
        return _resize(np.clip(values / (65535.0 if wide else 255.0), 0, 1), WORK_SIDE)
    if image.mode == "F":
        return _resize(np.clip(np.asarray(image, dtype=np.float32), 0, 1), WORK_SIDE)
    if has_alpha(image):
        return _composite(image.convert("RGBA"))
    return _resize(np.asarray(image.convert("L"), dtype=np.float32) / 255.0, WORK_SIDE)


def _composite(rgba: Image.Image) -> np.ndarray:
    """Transparent pixels onto a background that contrasts with the opaque ones: a black stroke on a
    transparent canvas lands on white, a white one on black (onto white alone it would vanish)."""
    if max(rgba.size) > WORK_SIDE:
        rgba = rgba.reduce(math.ceil(max(rgba.size) / WORK_SIDE))
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
    if alpha.min() >= 1.0:
        return luma
    ink = float((luma * alpha).sum() / max(alpha.sum(), 1e-6))
    background = 0.0 if ink > 0.5 else 1.0
    return alpha * luma + (1 - alpha) * background


# --- the digit ---------------------------------------------------------------------------------------


@dataclass
class Ink:
    """The digit separated from its paper: ink in 0..1 on a 0 background, and how sure that is."""

    ink: np.ndarray  # (height, width) float32
    inverted: bool  # the image was dark on light
    contrast: float  # the ink's level above the paper, in gray levels 0..1
    noise: float  # the paper's standard deviation, in gray levels 0..1


def paper(gray: np.ndarray) -> np.ndarray:
    """The paper under the digit: a quadratic surface in x and y fitted to the image with the outliers
    (the ink, of either polarity) left out, evaluated at every pixel. A flat canvas gives its one
    level; grey paper under a lamp gives its gradient, which a threshold alone would take for ink."""
    small = _resize(gray, 64)
    height, width = small.shape
    ys, xs = np.mgrid[0:height, 0:width]
    basis = _quadratic(xs / max(width - 1, 1), ys / max(height - 1, 1))
    values = small.ravel()
    coefficients = np.zeros(basis.shape[1])
    coefficients[0] = np.median(values)  # a start the ink cannot pull: the paper is most of the image
    keep = np.ones(values.shape, dtype=bool)
    for terms in (3, 3, 6, 6, 6):  # a plane first, then the curvature: a quadratic at once can bend into a bold digit
        residual = values - basis @ coefficients
        middle = np.median(residual[keep])
        spread = 1.4826 * np.median(np.abs(residual[keep] - middle)) + 1e-3
        keep = np.abs(residual - middle) < 2.5 * spread
        if keep.sum() < basis.shape[1] * 4:
            return np.full_like(gray, float(np.median(gray)))
        coefficients = np.zeros(basis.shape[1])
        coefficients[:terms] = _least_squares(basis[keep, :terms], values[keep])
    height, width = gray.shape
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    c = coefficients.astype(np.float32)
    return c[0] + c[1] * xs + c[2] * ys + c[3] * xs * xs + c[4] * ys * ys + c[5] * xs * ys


def _least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The normal equations, a few terms by a few (np.linalg.lstsq's SVD is far costlier for so small a system)."""
    gram = a.T @ a + 1e-9 * np.eye(a.shape[1])
    return np.linalg.solve(gram, a.T @ b)


def _quadratic(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    xs, ys = xs.ravel(), ys.ravel()
    return np.stack([np.ones_like(xs), xs, ys, xs * xs, ys * ys, xs * ys], axis=1)


def _resize(gray: np.ndarray, side: int) -> np.ndarray:
    """Area-averaged to at most ``side`` on the larger side (never enlarged)."""
    height, width = gray.shape
    if max(height, width) <= side:
        return gray
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray, "F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def find_ink(gray: np.ndarray) -> Ink:
    """The ink, light on a zero background: the paper subtracted, the polarity decided by which side of
    the paper the strong deviations lie on, the contrast scaled to 1 and the noise cut off. Raises
    ImageRejected when nothing stands out from the paper (a blank canvas, an empty page, pure noise)."""
    deviation = gray - paper(gray)
    noise = max(1.4826 * float(np.median(np.abs(deviation - np.median(deviation)))), 1.0 / 255)
    floor = max(4 * noise, 0.04)
    light = float(np.clip(deviation - floor, 0, None).sum())
    dark = float(np.clip(-deviation - floor, 0, None).sum())
    inverted = dark > light
    ink = -deviation if inverted else deviation
    strong = ink[ink > floor]
    if strong.size < max(4, gray.size // 20000):
        raise ImageRejected("no digit found: the image is blank or nearly so", 422)
    contrast = float(np.percentile(strong, 90))
    if contrast < 6 * noise:
        raise ImageRejected("no digit found: nothing stands out from the background's noise", 422)
    cut = min(max(3 * noise / contrast, 0.15), 0.5)
    scaled = np.clip((ink / contrast - cut) / (1 - cut), 0, 1).astype(np.float32)
    return Ink(scaled, inverted, contrast, noise)


def remove_rules(ink: np.ndarray) -> np.ndarray:
    """Ruled or squared paper: three or more thin lines of ink across nearly the whole image are the
    paper's, not the digit's. They are wiped, with a pixel either side (a stroke crossing one loses a
    sliver, too thin to see at 28x28); one or two long lines are left, for they may be a 7's or a 5's bar."""
    ink = ink.copy()
    for axis in (0, 1):
        covered = (ink > 0.02).mean(axis=1 - axis) > 0.85  # rows (axis 0) or columns (axis 1) inked across
        edges = np.flatnonzero(np.diff(np.concatenate([[0], covered.astype(np.int8), [0]])))
        runs = [(start, stop) for start, stop in zip(edges[::2], edges[1::2], strict=True)]
        thin = [(start, stop) for start, stop in runs if stop - start <= max(3, 0.02 * len(covered))]
        if len(thin) < 3:
            continue
        for start, stop in thin:
            index = slice(max(start - 1, 0), stop + 1)
            if axis == 0:
                ink[index, :] = 0
            else:
                ink[:, index] = 0
    return ink


def crop(ink: np.ndarray, trim: float = 0.002) -> np.ndarray:
    """The digit's bounding box, less the outermost ``trim`` of its mass on each side, so a speck of
    dirt far from the digit does not stretch the box."""
    rows = _span(ink.sum(axis=1), trim)
    cols = _span(ink.sum(axis=0), trim)
    return ink[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1]


def _span(mass: np.ndarray, trim: float) -> tuple[int, int]:
    cumulative = np.cumsum(mass) / mass.sum()
    first = int(np.searchsorted(cumulative, trim, side="right"))
    last = int(np.searchsorted(cumulative, 1 - trim, side="left"))
    return first, max(first, min(last, len(mass) - 1))


def stroke_width(ink: np.ndarray) -> float:
    """The pen's width in pixels: 2 x area / perimeter of the ink above half its level (a stroke of
    length L and width w has area L w and a perimeter of about 2 L)."""
    mask = ink > 0.5
    area = int(mask.sum())
    edges = int(np.count_nonzero(np.diff(mask, axis=0))) + int(np.count_nonzero(np.diff(mask, axis=1)))
    edges += int(mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum())
    return 2 * area / edges if edges else 0.0


def mend_strokes(digit: np.ndarray) -> np.ndarray:
    """The cropped digit at most STEP_WORK on a side (by max-pooling, which keeps thin lines), its
    strokes thickened with a round pen when they would be thinner than THIN pixels in the 28x28 input."""
    digit = _max_pool(digit, math.ceil(max(digit.shape) / STEP_WORK))
    per_output_pixel = max(digit.shape) / BOX  # work pixels per pixel of the 20x20 box
    width = stroke_width(digit) / per_output_pixel
    if width >= THIN or max(digit.shape) < BOX:
        return digit
    radius = round((STROKE - width) * per_output_pixel / 2)
    return crop(_dilate(digit, radius), 0.0) if radius > 0 else digit


def _max_pool(ink: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return ink
    height, width = ink.shape
    padded = np.zeros((math.ceil(height / factor) * factor, math.ceil(width / factor) * factor), np.float32)
    padded[:height, :width] = ink
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).max(axis=(1, 3))


def _dilate(ink: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation with a disk: what a rounder, wider pen would have drawn."""
    height, width = ink.shape
    padded = np.zeros((height + 4 * radius, width + 4 * radius), np.float32)
    padded[2 * radius : 2 * radius + height, 2 * radius : 2 * radius + width] = ink
    out = padded.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out = np.maximum(out, np.roll(padded, (dy, dx), axis=(0, 1)))
    return out


def fit_box(digit: np.ndarray) -> np.ndarray:
    """The digit scaled so its larger side is BOX pixels, its aspect ratio kept (Lanczos, antialiased)."""
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = Image.fromarray(digit.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0, 1)


def centre(digit: np.ndarray) -> np.ndarray:
    """The boxed digit in 28x28, shifted so its centre of mass is at (14, 14) as in MNIST; a shift that
    would push part of the digit out of the frame is held at the frame's edge."""
    height, width = digit.shape
    ys, xs = np.mgrid[0:height, 0:width]
    mass = float(digit.sum())
    top = round(CENTRE - float((digit * ys).sum()) / mass)
    left = round(CENTRE - float((digit * xs).sum()) / mass)
    top = min(max(top, 0), SIDE - height)
    left = min(max(left, 0), SIDE - width)
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top : top + height, left : left + width] = digit
    return out


def mnist_like(gray: np.ndarray) -> np.ndarray:
    """A grayscale image (0..1) as MNIST would have it: uint8 (28, 28), a light digit on black."""
    if gray.shape == (SIDE, SIDE) and is_mnist(gray):
        return np.round(gray * 255).astype(np.uint8)
    found = find_ink(gray)
    digit = centre(fit_box(mend_strokes(crop(remove_rules(found.ink)))))
    peak = float(digit.max())
    if peak <= 0:
        raise ImageRejected("no digit found: the image is blank or nearly so", 422)
    return np.round(digit / peak * 255).astype(np.uint8)


def is_mnist(gray: np.ndarray) -> bool:
    """Already MNIST's format: a light digit on a black background (its border at most a few dark grey)."""
    border = np.concatenate([gray[:2].ravel(), gray[-2:].ravel(), gray[:, :2].ravel(), gray[:, -2:].ravel()])
    return float(np.median(border)) <= 0.05 and float(gray.max()) > 0.3
