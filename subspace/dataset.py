"""Dataset folders: image files in a folder, and the MVTec AD layout::

    root/train/good/*.png
    root/test/<defect>/*.png              # <defect> == "good" for normal test images
    root/ground_truth/<defect>/<stem>_mask.png

Only paths are listed here; the images and masks load through :mod:`subspace.data`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_LAYOUT = (
    "root/train/good/*.png, root/test/<defect>/*.png and "
    "root/ground_truth/<defect>/<stem>_mask.png (the MVTec AD layout)"
)


class DatasetError(ValueError):
    """A dataset folder does not have the expected layout or holds no images."""


@dataclass(frozen=True)
class Sample:
    """One test image of an MVTec-layout dataset."""

    path: Path  # the image file
    mask_path: Path | None  # its ground-truth mask; None = no mask (treated as all normal)
    defect: str  # defect type (the folder name); "good" for normal test images


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files (e.g. macOS ._*) skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (.png .jpg .jpeg .bmp .tif .tiff .webp, any case) in a folder.

    Raises:
        DatasetError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found; check the path.")
    files = image_files(folder)
    if not files:
        raise DatasetError(
            f"{folder}: no image files; expected files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}."
        )
    return files


def list_train(root: str | os.PathLike) -> list[Path]:
    """The normal training images, ``root/train/good/*``.

    Raises:
        DatasetError: ``root/train/good`` is missing or empty.
    """
    good = Path(root) / "train" / "good"
    if not good.is_dir():
        raise DatasetError(f"{good} not found; a dataset folder must contain {_LAYOUT}.")
    return list_images(good)


def list_test(root: str | os.PathLike) -> list[Sample]:
    """The test images ``root/test/<defect>/*`` with their masks, sorted by defect then name.

    Masks are looked up at ``root/ground_truth/<defect>/<stem>_mask.png``. A defective image
    without one gets ``mask_path=None`` and a logged warning (its pixels will count as normal).

    Raises:
        DatasetError: ``root/test`` is missing or holds no images.
    """
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise DatasetError(f"{test} not found; a dataset folder must contain {_LAYOUT}.")
    samples = []
    for folder in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect = folder.name
        missing = []
        for path in image_files(folder):
            mask = root / "ground_truth" / defect / f"{path.stem}_mask.png"
            if not mask.is_file():
                mask = None
                if defect != "good":
                    missing.append(path.name)
            samples.append(Sample(path, mask, defect))
        if missing:
            log.warning(
                "%d test image(s) in %s have no mask at %s/<stem>_mask.png (e.g. %s); their "
                "pixels count as normal",
                len(missing),
                folder,
                root / "ground_truth" / defect,
                missing[0],
            )
    if not samples:
        raise DatasetError(f"{test}: no test images; a dataset folder must contain {_LAYOUT}.")
    return samples
