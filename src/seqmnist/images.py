"""Reading an image nobody vouches for (a user's file, an upload) within limits.

An image is read in three guarded stages, so that no file, however made, costs more than the limits:

    bytes     at most MAX_BYTES, counted before anything is decoded
    header    PNG, JPEG, GIF, BMP or WebP, and at most MAX_PIXELS pixels by the header's width x height,
              checked before a single pixel is decoded (a 20,000 x 20,000 PNG of a few KB is refused
              without allocating it)
    pixels    decoded; a truncated or corrupt file is refused

Every refusal is an :class:`ImageRejected`: one line, and the HTTP status the server answers it with.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SeqmnistError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP or WebP"
WORK_SIDE = 1024  # images are analysed at most this large: plenty for one digit, and bounded time
_OPENING = threading.Lock()  # warnings.catch_warnings is process-wide: one header read at a time (microseconds)


class ImageRejected(SeqmnistError):
    """An image that cannot be used, with the HTTP status the server answers it with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def read_image_file(path: Path) -> bytes:
    """A file's bytes, its size checked before it is read (a 50 MB file is refused unread)."""
    path = Path(path)
    if path.is_dir():
        raise ImageRejected(f"{path}: is a directory, not an image")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageRejected(f"{path}: {_megabytes(size)} is larger than the {_megabytes(MAX_BYTES)} limit", 413)
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ImageRejected(f"{path}: file not found", 404) from None
    except OSError as exc:
        raise ImageRejected(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return data


def decode_image(data: bytes) -> Image.Image:
    """The image in ``data``, decoded only once its byte count, format and header size pass the limits."""
    if not data:
        raise ImageRejected("empty file: no image in it")
    if len(data) > MAX_BYTES:
        raise ImageRejected(f"{_megabytes(len(data))} is larger than the {_megabytes(MAX_BYTES)} limit", 413)
    try:
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own, higher limit
        size = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(size[1]):,} pixels" if size else "too many pixels"
        raise ImageRejected(f"{pixels} is more than the limit of {MAX_PIXELS:,}", 413) from None
    except UnidentifiedImageError:
        raise ImageRejected(f"not a {FORMAT_NAMES} image", 415) from None
    except Exception as exc:  # a header Pillow recognised but could not parse (untrusted bytes: any error)
        raise ImageRejected(f"not a readable image ({_reason(exc)})", 415) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        pixels = f"{width}x{height} = {width * height:,} pixels"
        raise ImageRejected(f"{pixels} is more than the limit of {MAX_PIXELS:,}", 413)
    if width < 1 or height < 1:
        raise ImageRejected(f"{width}x{height} pixels: an empty image")
    if image.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second picture in it
        image.draft(None, (WORK_SIDE, WORK_SIDE))  # a big JPEG decoded at 1/2, 1/4 or 1/8 size: quicker, smaller
    try:
        image.load()
    except Exception as exc:  # Pillow's decoders on malformed data raise OSError mostly, but not only
        raise ImageRejected(f"a truncated or corrupt {image.format} image ({_reason(exc)})") from None
    return image


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size < 2**30 else f"{size / 2**30:.1f} GB"


# --- the image as a person sees it -------------------------------------------------------------------


def has_alpha(image: Image.Image) -> bool:
    """Whether some pixels may be transparent (an alpha channel, or a palette's transparent colour)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def picture(path: Path, side: int = 512) -> np.ndarray:
    """The image file as a person sees it, for a figure: upright (EXIF), RGB on white where it is
    transparent, at most ``side`` pixels on a side."""
    image = ImageOps.exif_transpose(decode_image(read_image_file(path)))
    if has_alpha(image):
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image.convert("RGBA"))
    image = image.convert("RGB")
    image.thumbnail((side, side))
    return np.asarray(image)
