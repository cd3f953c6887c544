"""The app's raster drawing: fixed-scale colour maps, overlays, masks, thumbnails, result
bundles (the page's HTML widgets and style are in :mod:`subspace.widgets`, the per-dimension
chart in :mod:`subspace.chart`).

Anomaly maps are always drawn on the detector's calibrated colour scale (``vmin`` .. ``vmax``
from leave-one-out on the references), never stretched per image: a normal query looks calm.
Only numpy, Pillow and matplotlib's colour maps (no pyplot, so it is thread-safe).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

CMAP = "turbo"  # perceptually ordered blue -> red; readable on projectors
DISPLAY_SIDE = 768  # long side of images sent to the browser: never upscaled by the page
THUMB_SIDE = 160  # long side of reference-patch thumbnails
ALPHA = (0.25, 0.75)  # heat-map opacity at the bottom / top of the colour scale
MASK_RGB = (255, 40, 40)  # predicted defect: fill and contour
TRUTH_RGB = (60, 255, 90)  # ground-truth outline (example sets only)


# ----------------------------------------------------------------------------- geometry
def fit_display(size: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(W, H) -> (w, h) with the same aspect ratio and the longer side equal to ``side``."""
    w, h = size
    s = side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def to_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """RGB copy of ``image`` resized (either way) so its longer side is ``side`` pixels.

    Upscaling small images here keeps the browser from upscaling them, so click positions
    reported by the page map exactly onto image pixels.
    """
    size = fit_display(image.size, side)
    image = image.convert("RGB")
    return image.copy() if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def cell_box(
    size: tuple[int, int], grid: tuple[int, int], gy: int, gx: int
) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of grid cell (gy, gx) on an image of ``size`` = (W, H)."""
    (w, h), (gh, gw) = size, grid
    return (
        int(gx * w / gw),
        int(gy * h / gh),
        int(np.ceil((gx + 1) * w / gw)),
        int(np.ceil((gy + 1) * h / gh)),
    )


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float map -> (h, w) float32 map for an image of ``size`` = (w, h), bilinear."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (size[1], size[0]):
        return values
    return np.asarray(Image.fromarray(values).resize(size, Image.Resampling.BILINEAR))  # mode F


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask -> (h, w) bool mask for ``size`` = (w, h), nearest neighbour."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(img.resize(size, Image.Resampling.NEAREST)) > 127


# ----------------------------------------------------------------------------- colour
def normalize(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values onto [0, 1] with the fixed scale ``vmin`` .. ``vmax`` (clipped)."""
    span = max(float(vmax) - float(vmin), 1e-12)
    return np.clip((np.asarray(values, dtype=np.float32) - vmin) / span, 0.0, 1.0)


def lut(cmap: str = CMAP) -> np.ndarray:
    """(256, 3) uint8 colour table of a matplotlib colour map."""
    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = CMAP) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours on the fixed scale."""
    idx = (normalize(values, vmin, vmax) * 255).round().astype(np.uint8)
    return lut(cmap)[idx]


def overlay(
    image: Image.Image, heatmap: np.ndarray, vmin: float, vmax: float, cmap: str = CMAP
) -> Image.Image:
    """Blend the colour-mapped ``heatmap`` over ``image`` (heat map resized to the image).

    Opacity grows with the anomaly score, so calm regions keep the photo readable.
    """
    m = resize_map(heatmap, image.size)  # (h, w)
    t = normalize(m, vmin, vmax)[..., None]  # (h, w, 1)
    alpha = ALPHA[0] + (ALPHA[1] - ALPHA[0]) * t
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * (1 - alpha) + colorize(m, vmin, vmax, cmap).astype(np.float32) * alpha
    return Image.fromarray(out.round().astype(np.uint8))


def _neighbours(mask: np.ndarray, border: bool, op) -> np.ndarray:
    """``op`` (np.logical_and / or) of each pixel with its 4 neighbours, ``border`` outside."""
    p = np.pad(mask, 1, constant_values=border)
    out = op(p[1:-1, 1:-1], p[:-2, 1:-1])
    for nb in (p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        out = op(out, nb)
    return out


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool -> (H, W) bool ring of about ``width`` pixels along the mask's border."""
    edge = mask & ~_neighbours(mask, True, np.logical_and)  # mask minus its erosion
    for _ in range(max(0, width - 1)):
        edge = _neighbours(edge, False, np.logical_or)  # dilate
    return edge


def mask_overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    threshold: float,
    truth: np.ndarray | None = None,
) -> Image.Image:
    """Query with the thresholded map as a red fill + contour, ground truth outlined in green.

    Args:
        image: the query (any size; drawn at this size).
        heatmap: (H, W) anomaly map of the query at any size.
        threshold: pixels with a map value above it are called defective.
        truth: optional (H', W') bool ground-truth mask, outlined for comparison.
    """
    m = resize_map(heatmap, image.size)  # (h, w)
    mask = m > threshold
    out = np.asarray(image.convert("RGB"), dtype=np.float32) * 0.8  # dim: red must stand out
    red = np.asarray(MASK_RGB, dtype=np.float32)
    out[mask] = out[mask] * 0.55 + red * 0.45
    width = max(2, round(max(image.size) / 300))
    out[_outline(mask, width)] = red
    if truth is not None:
        t = resize_mask(truth, image.size)
        out[_outline(t, width)] = TRUTH_RGB
    return Image.fromarray(out.round().astype(np.uint8))


def defect_area(heatmap: np.ndarray, threshold: float) -> float:
    """Share of pixels (0..1) of the map above ``threshold``."""
    return float((np.asarray(heatmap) > threshold).mean())


def mark_cell(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Copy of ``image`` with a black-and-white frame around ``box`` (visible on any colour)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    x0, y0, x1, y1 = box
    pad = max(2, round(max(image.size) / 250))
    draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), outline=(0, 0, 0), width=pad + 2)
    draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), outline=(255, 255, 255), width=pad)
    return out


# ----------------------------------------------------------------------------- figures
def label_thumbnail(image: Image.Image, text: str) -> Image.Image:
    """Copy of ``image`` with ``text`` on a dark band along its bottom edge (always legible,
    unlike captions that a narrow gallery truncates)."""
    out = image.convert("RGB").copy()
    size = max(11, round(min(out.width / 10, out.height / 5)))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(out, "RGBA")
    band = size + 8
    draw.rectangle((0, out.height - band, out.width, out.height), fill=(0, 0, 0, 170))
    draw.text((5, out.height - band + 3), text, fill=(255, 255, 255), font=font)
    return out


def patch_thumbnails(
    query: Image.Image,
    query_box: tuple[int, int, int, int],
    refs: Sequence[Image.Image],
    scales: Sequence[float],
    sources: Sequence[dict],
    query_caption: str,
) -> list[tuple[Image.Image, str]]:
    """Thumbnails of the query patch, then of the reference patches that rebuilt it.

    Args:
        query: query image; ``query_box`` is the patch's pixel box on it.
        refs: reference images (possibly downscaled); ``scales[i]`` = their px per original px.
        sources: :meth:`Detector.sources` output: ``image``, ``box`` (original px), ``coef``.
        query_caption: caption of the first thumbnail.
    """

    def thumb(img: Image.Image, box) -> Image.Image:
        crop = img.crop(tuple(int(round(v)) for v in box))
        return crop.resize(fit_display(crop.size, THUMB_SIDE), Image.Resampling.LANCZOS)

    def context_box(box, size):  # the query cell alone is tiny: show its 3x3 neighbourhood
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        return max(0, x0 - w), max(0, y0 - h), min(size[0], x1 + w), min(size[1], y1 + h)

    first = thumb(query, context_box(query_box, query.size))
    out = [(label_thumbnail(first, query_caption), query_caption)]
    for src in sources:  # strongest first
        i, s = src["image"], scales[src["image"]]
        box = [v * s for v in src["box"]]
        caption = f"ref {i + 1} · {src['coef']:+.2f}"
        out.append((label_thumbnail(thumb(refs[i], box), caption), caption))
    return out


# ----------------------------------------------------------------------------- bundle
def jpeg(image: Image.Image) -> bytes:
    """The page's encoding of a rendered result: JPEG, quality 92, full chroma resolution.

    About 1 ms for a 768 px render where WebP (gradio's default) takes about 25 ms on two
    cores, on the path of every run, click and threshold move; without chroma subsampling a
    1-pixel mask outline keeps its colour.
    """
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=92, subsampling=0)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over size: PNGs are zipped as-is
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def write_bundle(
    path: str | Path,
    query: Image.Image,
    maps: dict[str, np.ndarray],
    scales: dict[str, tuple[float, float]],
    threshold: float,
    scores: dict,
) -> Path:
    """Write a zip with, per method, the heat-map PNG, overlay PNG and raw ``.npy`` map, plus
    the thresholded mask PNG (primary map) and ``scores.json``.

    Args:
        path: the zip file to write.
        query: the query at full size.
        maps: method name -> (H, W) raw map at the query's size; the first is the primary.
        scales: method name -> (vmin, vmax) calibrated colour scale.
        threshold: mask threshold on the primary map.
        scores: JSON-able numbers (see :func:`subspace.session.scores`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    primary = next(iter(maps))
    with zipfile.ZipFile(path, "w") as z:
        for name, m in maps.items():
            vmin, vmax = scales[name]
            z.writestr(f"heatmap_{name}.png", _png(Image.fromarray(colorize(m, vmin, vmax))))
            z.writestr(f"overlay_{name}.png", _png(overlay(query, m, vmin, vmax)))
            # Stored, not deflated: float maps shrink by about a fifth for 0.1 s of CPU each,
            # and a bundle is written after every run whether or not it is downloaded.
            z.writestr(f"map_{name}.npy", _npy(m))
        mask = Image.fromarray((np.asarray(maps[primary]) > threshold).astype(np.uint8) * 255)
        z.writestr(f"mask_{primary}.png", _png(mask))
        z.writestr("scores.json", json.dumps(scores, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    return path
