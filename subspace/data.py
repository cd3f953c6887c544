"""Image input for the app, the CLI and datasets: load anything, or fail with one clear message.

`load_image` is the single door through which user images enter: whatever a public web demo
receives either becomes an RGB 8-bit PIL image of a bounded size, or raises `ImageError`,
whose text is meant to be shown to the user as-is. Files are read into memory in one go (no
handle stays open), only a few well-known formats are decoded (never Pillow's EPS plugin,
which shells out to Ghostscript), and the pixel count is checked from the header before
anything is decoded.
Dataset folders are listed by :mod:`subspace.dataset`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 25 * 1024 * 1024  # larger files are refused before reading
MAX_PIXELS = 40_000_000  # width * height from the header; larger is refused before decoding
MAX_SIDE = 2048  # the longer side is downscaled to this after decoding
MIN_SIDE = 16  # a smaller side is refused: too small to hold a feature map
MAX_ASPECT = 12.0  # long side / short side; more extreme is refused

# Pillow plugins allowed to decode untrusted bytes ("JPEG" also opens multi-picture MPO files).
_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_SUPPORTED = "a PNG, JPEG, BMP, TIFF, WebP or GIF image"
# What common non-images start with, to tell users what they actually uploaded.
_SIGNATURES = (
    (b"%PDF", "it looks like a PDF document"),
    (b"PK\x03\x04", "it looks like a ZIP archive or an Office document"),
    (b"\x1f\x8b", "it looks like a gzip archive"),
    (b"Rar!", "it looks like a RAR archive"),
)

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
)


class ImageError(ValueError):
    """Unusable image input; str(err) is shown to users as-is."""


class FileTooLarge(ImageError):
    """A file over ``MAX_FILE_BYTES``; str(err) is shown to users as-is."""


def _describe(data: bytes) -> str:
    """Best guess at what a non-image byte string is, for the error message."""
    for magic, what in _SIGNATURES:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return "it looks like a HEIC/AVIF photo or a video"
    text = data[:1024].decode("utf-8", "replace").rstrip("\ufffd")  # may end mid-character
    if text and all(c.isprintable() or c.isspace() for c in text) and "\ufffd" not in text:
        return "it looks like a text file"
    return "unrecognised format"


@contextmanager
def _pillow_errors(label: str, data: bytes = b"") -> Iterator[None]:
    """Turn whatever Pillow raises on bad bytes into one `ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(
            f"{label}: not a supported image ({_describe(data)}); upload {_SUPPORTED}."
        ) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"{label}: the image has far too many pixels (over {MAX_PIXELS:,}); "
            f"resize it to at most {MAX_SIDE} pixels per side and try again."
        ) from err
    # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError,
    # IndexError, KeyError... on hostile input; none of that may reach a user as a crash.
    except Exception as err:
        log.debug("decoding %s failed", label, exc_info=True)
        raise ImageError(
            f"{label}: the image data is truncated or corrupt; re-save the image "
            "(e.g. as PNG) and upload it again."
        ) from err


def _check_geometry(size: tuple[int, int], label: str) -> None:
    """Refuse too many pixels, too small sides and extreme aspect ratios. size = (W, H)."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{label}: the image is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit; resize it to at most {MAX_SIDE} pixels "
            "per side and try again."
        )
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"{label}: the image is only {w}x{h} pixels; both sides must be at least "
            f"{MIN_SIDE} pixels. Use a larger image."
        )
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ImageError(
            f"{label}: the image is {w}x{h} pixels, an aspect ratio of "
            f"{max(w, h) / min(w, h):.1f}:1; at most {MAX_ASPECT:g}:1 is supported. "
            "Crop it closer to the object."
        )


def read_file(path: str | os.PathLike, label: str) -> bytes:
    """The bytes of the regular file at ``path``, read without blocking and bounded.

    Only regular files are read: a FIFO, a device (whose ``st_size`` is 0 however much it
    yields), a socket or a folder is refused at once. The file is opened non-blocking, so a FIFO
    cannot hold the caller, and at most ``MAX_FILE_BYTES + 1`` bytes are read (+1: a file that
    grew past the limit since its size was checked is refused too).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as err:
        raise ImageError(f"{label}: file not found; check the path.") from err
    except IsADirectoryError as err:
        raise ImageError(f"{label}: this is a folder; choose an image file.") from err
    except OSError as err:
        raise ImageError(
            f"{label}: cannot read the file ({err.strerror or err}); check that it exists "
            "and is readable."
        ) from err
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{label}: this is a folder; choose an image file.")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{label}: not a regular file; choose an image file.")
        if st.st_size > MAX_FILE_BYTES:  # refuse without reading it
            raise FileTooLarge(too_big(label, st.st_size))
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ImageError(f"{label}: cannot read the file ({err.strerror or err}).") from err
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # it grew since its size was checked
        raise FileTooLarge(too_big(label, len(data)))
    return data


def _read_bytes(source: str | os.PathLike | bytes | BinaryIO, label: str) -> bytes:
    """All bytes of a path, a bytes-like object or a binary file object, size-checked."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = read_file(source, label)
    elif hasattr(source, "read"):
        data = source.read(MAX_FILE_BYTES + 1)
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"{label}: open the file in binary mode ('rb'), not text mode.")
        data = bytes(data)
    else:
        raise TypeError(
            f"load_image() cannot read a {type(source).__name__}; pass a path, bytes, a binary "
            "file object, a PIL image or a numpy array."
        )
    if not data:
        raise ImageError(f"{label}: the file is empty; upload {_SUPPORTED}.")
    if len(data) > MAX_FILE_BYTES:
        raise FileTooLarge(too_big(label, len(data)))
    return data


def too_big(label: str, n_bytes: int) -> str:
    return (
        f"{label}: the file is {n_bytes / 2**20:.1f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
        "limit; upload a smaller or more compressed image (e.g. JPEG)."
    )


def _draft(img: Image.Image) -> None:
    """Let the JPEG decoder shrink big images by 1/2, 1/4 or 1/8 while decoding."""
    w, h = img.size
    if img.format in ("JPEG", "MPO") and max(w, h) > MAX_SIDE:
        s = MAX_SIDE / max(w, h)
        img.draft(None, (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))


def _orient(img: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF raises anything from struct.error to KeyError
        log.warning("%s: ignoring unreadable EXIF orientation", label, exc_info=True)
        return img


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha onto a white background."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any decoded mode -> a new 8-bit RGB image."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float32)  # (H, W); float32 is exact enough for /257
        if mode != "F":  # 16-bit range (also assumed for 32-bit "I") -> 8 bit: 65535 -> 255
            arr /= 257.0
        arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)
        return Image.fromarray(np.rint(arr).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        if mode == "La":
            img = img.convert("RGBa")  # Pillow has no direct La -> RGBA conversion
        return _on_white(img)
    try:
        return img.convert("RGB")  # RGB (a copy), 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX
    except ValueError as err:
        raise ImageError(
            f"{label}: unsupported colour mode {mode!r}; save the image as 8-bit RGB or "
            "grayscale and try again."
        ) from err


def _downscale(img: Image.Image) -> Image.Image:
    """Shrink so the longer side is at most MAX_SIDE, keeping the aspect ratio."""
    w, h = img.size
    if max(w, h) <= MAX_SIDE:
        return img
    s = MAX_SIDE / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _from_array(arr: np.ndarray, label: str) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 / uint16 / float [0, 1] -> PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(
            f"{label}: unsupported array shape {arr.shape}; pass (H, W), (H, W, 1), "
            "(H, W, 3) or (H, W, 4)."
        )
    _check_geometry((arr.shape[1], arr.shape[0]), label)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.rint(arr.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{label}: the array contains NaN or inf; pass finite values.")
        if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise ImageError(
                f"{label}: float arrays must hold values in [0, 1], got "
                f"[{arr.min():g}, {arr.max():g}]; divide 8-bit data by 255."
            )
        out = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"{label}: unsupported array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]."
        )
    return Image.fromarray(np.ascontiguousarray(out))


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Load and validate one image from anything a user or a script may hand over.

    Args:
        source: a path (str or PathLike), bytes, a binary file object, a PIL image, or a numpy
            array (H, W), (H, W, 1), (H, W, 3), (H, W, 4) of uint8, uint16 or float in [0, 1].
        name: how error messages refer to the input, e.g. ``"reference 'foo.png'"``. Defaults
            to the quoted file name for paths and ``"image"`` otherwise.

    Returns:
        A new RGB 8-bit image: EXIF orientation applied, first frame of an animation, alpha
        composited onto white, 16-bit data scaled by 1/257, longer side at most MAX_SIDE.

    Raises:
        ImageError: the input is not a usable image; the message says why and what to do.
        TypeError: ``source`` is of an unsupported type (a programming error).
    """
    if name is not None:
        label = name
    elif isinstance(source, str | os.PathLike):
        label = repr(Path(source).name or str(source))
    else:
        label = "image"

    if isinstance(source, np.ndarray):
        rgb = _to_rgb(_from_array(source, label), label)
    elif isinstance(source, Image.Image):
        _check_geometry(source.size, label)
        with _pillow_errors(label):
            if getattr(source, "is_animated", False) and source.tell() != 0:
                source.seek(0)
            source.load()
        rgb = _to_rgb(_orient(source, label), label)
    else:
        data = _read_bytes(source, label)
        with _pillow_errors(label, data):
            opened = Image.open(io.BytesIO(data), formats=_FORMATS)
        with opened:  # frame 0 is the current frame right after opening
            _check_geometry(opened.size, label)
            with _pillow_errors(label, data):
                _draft(opened)
                opened.load()
            rgb = _to_rgb(_orient(opened, label), label)
    return _downscale(rgb)


def load_mask(path: str | os.PathLike | None, size: tuple[int, int]) -> np.ndarray:
    """Load a ground-truth mask as booleans at a given image size.

    Args:
        path: mask file (any value > 0 is anomalous), or None for an all-normal image.
        size: (W, H) of the image the mask belongs to, i.e. ``load_image(...).size``; a mask
            of another size is resized with nearest-neighbour interpolation.

    Returns:
        (H, W) bool array.

    Raises:
        ImageError: the mask file is missing or not a readable image.
    """
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"size must be a positive (W, H), got {size}.")
    if path is None:
        return np.zeros((h, w), dtype=bool)
    label = f"mask {Path(path).name!r}"
    data = _read_bytes(path, label)
    with _pillow_errors(label, data), Image.open(io.BytesIO(data), formats=_FORMATS) as img:
        if img.size[0] * img.size[1] > MAX_PIXELS:  # masks may be small or thin, not huge
            _check_geometry(img.size, label)  # raises the too-many-pixels error
        img.load()
        arr = np.asarray(img)  # (h, w) or (h, w, C); mode "1" gives bool, "I;16" uint16
    if arr.ndim == 3:
        arr = arr[..., : min(arr.shape[2], 3)].max(axis=2)  # colour channels, not alpha
    mask = arr > 0  # (h, w)
    if mask.shape != (h, w):
        small = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(small.resize((w, h), Image.Resampling.NEAREST)) > 0
    return mask
