"""Uploaded files -> checked bytes and images, with messages a visitor can act on.

Nothing is decoded that does not need to be: references are read as bytes (a reused fit never
decodes them) and a query's header is checked before the image is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import scratch
from .data import (
    _FORMATS,
    MAX_FILE_BYTES,
    FileTooLarge,
    ImageError,
    load_image,
    read_file,
    too_big,
)

log = logging.getLogger(__name__)

MAX_REFERENCES = 16  # normal reference images per fit; more adds little and costs memory


_RECEIVED: tuple[Path, ...] | None = None  # folders uploads may come from; None: any path


def receive_only_from(*folders: str | os.PathLike) -> None:
    """Read uploads only from files inside ``folders`` (real paths: links out are refused).

    The app names gradio's upload folder and its own example files: a path a client names
    anywhere else on the server (a file, a device, a FIFO, a link out) gets the message of
    :func:`unreadable`, whether or not it exists.
    """
    global _RECEIVED
    _RECEIVED = tuple(Path(os.path.realpath(f)) for f in folders)


def unreadable(label: str) -> str:
    """The one message for any upload that cannot be read: it says nothing of the path."""
    return f"{label}: the upload could not be read; please upload it again."


def received(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file the app received (see :func:`receive_only_from`)."""
    if _RECEIVED is None:
        return True
    try:  # the path as given (not /proc/self/fd/N) and where its links lead both inside
        given, real = Path(os.path.abspath(path)), Path(os.path.realpath(path))
    except (OSError, ValueError, TypeError):  # e.g. a NUL byte in the name
        return False
    return all(
        any(p.is_relative_to(folder) and p != folder for folder in _RECEIVED) for p in (given, real)
    )


def read_bytes(path: str | os.PathLike, label: str) -> bytes:
    """An uploaded file's bytes: a regular file the app received, read without blocking and
    bounded (:func:`subspace.data.read_file`); too large a file is named as such, anything
    else unreadable gets :func:`unreadable`."""
    if not isinstance(path, str | os.PathLike) or not received(path):
        raise ImageError(unreadable(label))
    try:
        data = read_file(path, label)
    except FileTooLarge:  # the visitor can act on that
        raise
    except ImageError as err:
        raise ImageError(unreadable(label)) from err
    if _RECEIVED is not None:
        scratch.touch(path)  # in use: the app's sweep keeps it
    return data


def read_image(path: str | os.PathLike, label: str) -> tuple[bytes, Image.Image]:
    """Uploaded file -> (its bytes, RGB image). Raises ImageError with a visitor-facing text."""
    data = read_bytes(path, label)
    return data, load_image(data, name=label)


def check_upload(path: str | os.PathLike, label: str) -> None:
    """Refuse an upload whose header is not a supported image's, without decoding it.

    Raises:
        ImageError: the loader's own message (e.g. "it looks like a PDF document").
    """
    data = read_bytes(path, label)
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS):  # reads the header only
            return
    except Exception:  # whatever Pillow says, the loader says it better
        load_image(data, name=label)  # raises ImageError for anything Image.open refuses
        log.warning("%s: header refused by Pillow but loaded anyway", label)


def data_url_bytes(url: str, label: str) -> bytes:
    """The bytes of a base64 ``data:`` URL (an API client's image), its size checked from the
    text's length before anything is decoded."""
    head, sep, body = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ImageError(f"{label}: not a base64 data URL; send the image as a file instead.")
    if len(body) > 4 * (MAX_FILE_BYTES + 2) // 3 + 4:  # base64: 4 characters per 3 bytes
        raise FileTooLarge(too_big(label, len(body) * 3 // 4))
    try:
        return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as err:
        raise ImageError(f"{label}: the base64 data is corrupt; send the image again.") from err


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
