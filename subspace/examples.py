"""The ready-made example sets under ``examples/`` and their ground-truth masks."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import ImageError, load_mask
from .dataset import image_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleSet:
    """A ready-made few-shot set under ``examples/<name>/``."""

    name: str
    title: str
    normal: list[Path]
    query: list[Path]
    masks: dict[str, Path]  # query stem -> ground-truth mask


def read_set(folder: Path, title: str = "") -> ExampleSet | None:
    """The set in ``folder`` (``normal/``, ``query/``, ``ground_truth/<stem>_mask.png``), if any."""
    folder = Path(folder)
    if not (folder / "normal").is_dir() or not (folder / "query").is_dir():
        return None
    query = image_files(folder / "query")
    masks = {}
    for q in query:
        m = folder / "ground_truth" / f"{q.stem}_mask.png"
        if m.is_file():
            masks[q.stem] = m
    return ExampleSet(folder.name, title, image_files(folder / "normal"), query, masks)


def example_sets(root: str | os.PathLike) -> dict[str, ExampleSet]:
    """The example sets found under ``root``; the synthetic one is generated if missing."""
    from .synthetic import make_set

    root = Path(root)
    try:
        make_set(root / "synthetic")
    except Exception as err:  # the app works without it
        log.warning("could not generate the synthetic example set: %s", err)
    found = [
        read_set(root / "ballscrew", "Ball screw · pitting (real photos)"),
        read_set(root / "synthetic", "Metal mesh · scratch (synthetic)"),
    ]
    return {s.name: s for s in found if s is not None}


class TruthIndex:
    """Ground-truth masks of the example queries, found by the uploaded bytes' digest."""

    def __init__(self, sets: Sequence[ExampleSet]) -> None:
        self._masks: dict[str, Path] = {}
        for s in sets:
            for q in s.query:
                if q.stem in s.masks:
                    self._masks[hashlib.sha256(q.read_bytes()).hexdigest()] = s.masks[q.stem]

    def lookup(self, data: bytes, size: tuple[int, int]) -> np.ndarray | None:
        """(H, W) bool mask for a query's bytes, or None when it is not a known example."""
        path = self._masks.get(hashlib.sha256(data).hexdigest())
        if path is None:
            return None
        try:
            return load_mask(path, size)
        except (ImageError, ValueError) as err:
            log.warning("ground truth %s unusable: %s", path, err)
            return None
