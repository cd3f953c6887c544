"""Uploaded files -> checked bytes and images, with messages a visitor can act on.

Nothing is decoded that does not need to be: references are read as bytes (a reused fit never
decodes them) and a query's header is checked before the image is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import _FORMATS, MAX_FILE_BYTES, ImageError, load_image

log = logging.getLogger(__name__)

MAX_REFERENCES = 16  # normal reference images per fit; more adds little and costs memory


def read_bytes(path: str | os.PathLike, label: str) -> bytes:
    """An uploaded file's bytes, refusing oversized files before reading them."""
    path = Path(path)
    try:
        n = path.stat().st_size
    except OSError as err:
        raise ImageError(f"{label}: the upload could not be read; please upload it again.") from err
    if n > MAX_FILE_BYTES:
        raise ImageError(
            f"{label}: the file is {n / 2**20:.1f} MB, over the {MAX_FILE_BYTES / 2**20:.0f} MB "
            "limit per image; upload a smaller or more compressed image (e.g. JPEG)."
        )
    return path.read_bytes()


def read_image(path: str | os.PathLike, label: str) -> tuple[bytes, Image.Image]:
    """Uploaded file -> (its bytes, RGB image). Raises ImageError with a visitor-facing text."""
    data = read_bytes(path, label)
    return data, load_image(data, name=label)


def check_upload(path: str | os.PathLike, label: str) -> None:
    """Refuse an upload whose header is not a supported image's, without decoding it.

    Raises:
        ImageError: the loader's own message (e.g. "it looks like a PDF document").
    """
    try:
        with Image.open(path, formats=_FORMATS):  # reads the header only
            return
    except Exception:  # whatever Pillow says, the loader says it better
        read_image(path, label)  # raises ImageError for anything Image.open refuses
        log.warning("%s: header refused by Pillow but loaded anyway", label)


def finite(value, what: str) -> float:
    """A number from the page or an API call as a float; ValueError naming ``what`` if it is
    missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    return number


def _name(path: str | os.PathLike) -> str:
    return Path(path).name


@dataclass(frozen=True)
class Upload:
    """One uploaded reference, not decoded yet: a reused fit never decodes it."""

    label: str  # how messages name it, e.g. "reference 'a.png'"
    data: bytes


def read_references(paths: Sequence[str | os.PathLike]) -> tuple[list[Upload], str]:
    """Uploaded reference files -> (their bytes, content digest of all of them, in order)."""
    if not paths:
        raise ValueError("Add 1 to 16 normal reference images first (or load an example set).")
    if len(paths) > MAX_REFERENCES:
        raise ValueError(
            f"{len(paths)} reference images were given; the limit is {MAX_REFERENCES}. "
            "Remove some: a few typical good images are enough."
        )
    digest, uploads = hashlib.sha256(), []
    for p in paths:
        label = f"reference {_name(p)!r}"
        uploads.append(Upload(label, read_bytes(p, label)))
        digest.update(hashlib.sha256(uploads[-1].data).digest())
    return uploads, digest.hexdigest()


def check_references(files: Sequence[Upload]) -> None:
    """Decode every reference once. Raises ImageError naming each unusable one, all at once."""
    problems = []
    for u in files:
        try:
            load_image(u.data, name=u.label)
        except ImageError as err:
            problems.append(str(err))
    if problems:
        raise ImageError(" ".join(problems))


def reference_previews(paths: Sequence[str | os.PathLike]) -> tuple[list[tuple], list[str]]:
    """Thumbnails (image, caption) of uploaded references, and a problem text per bad file."""
    problems = []
    if len(paths) > MAX_REFERENCES:
        problems.append(
            f"{len(paths)} reference images: at most {MAX_REFERENCES} can be used; "
            "please remove some before running."
        )
    thumbs = []
    for p in paths[:MAX_REFERENCES]:
        try:
            _, img = read_image(p, f"reference {_name(p)!r}")
        except ImageError as err:
            problems.append(str(err))
            continue
        img.thumbnail((256, 256))
        thumbs.append((img, _name(p)))
    return thumbs, problems
