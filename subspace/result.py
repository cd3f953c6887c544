"""What the app shows of one prediction: renders, numbers, the patch explanation, the bundle.

A :class:`Result` is a session's last prediction with its display-size renders; the functions
here turn it into the page's images, colour bars, cards, plot and downloadable zip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import chart, viz, widgets

if TYPE_CHECKING:
    from .detector import Prediction
    from .session import Fit


@dataclass
class Result:
    """The last prediction of a session and its base renders (without the patch marker)."""

    pred: Prediction
    fit: Fit
    name: str  # query file name
    query: Image.Image  # full-size query (for the bundle)
    display: Image.Image  # display-size query
    renders: dict[str, Image.Image]  # "query", "sgfr", "knn": display-size, unmarked
    small_map: np.ndarray  # (h, w) SGFR map at display size, for fast mask redraws
    truth: np.ndarray | None  # (h, w) bool ground truth at display size, known examples only
    threshold: float
    patch: tuple[int, int]  # selected (gy, gx)
    fit_reused: bool


# ----------------------------------------------------------------------------- numbers
def _tally(cal, score: float) -> dict:
    """Where an image score falls among the references' leave-one-out scores."""
    ref = np.asarray(cal.image_scores, dtype=np.float64)
    return dict(
        score=float(score),
        p_value=float(cal.p_value(score)),
        refs_below=int((ref < score).sum()),
        reference_range=[float(ref.min()), float(ref.max())] if ref.size else [0.0, 0.0],
        default_threshold=float(cal.threshold),
        vmin=float(cal.vmin),
        vmax=float(cal.vmax),
    )


def scores(result: Result, threshold: float) -> dict:
    """Plain JSON-able numbers of a result: the app's summary, the API and the bundle."""
    det, pred = result.fit.detector, result.pred
    gy, gx = result.patch
    c = det.config
    return dict(
        query=result.name,
        backbone=pred.backbone,
        n_references=len(det.ref_sizes),
        sgfr=_tally(det.calibration["sgfr"], pred.sgfr.score),
        knn=_tally(det.calibration["knn"], pred.knn.score),
        threshold=float(threshold),
        defect_area=viz.defect_area(pred.sgfr.heatmap, threshold),
        seconds=dict(fit=float(det.fit_seconds), predict=float(pred.seconds)),
        fit_reused=result.fit_reused,
        bank=dict(
            size=det.bank_size,
            full=det.n_full,
            bytes=det.bank_bytes,
            sampling=c.sampling,
            ratio=c.ratio,
        ),
        patch=dict(row=gy, col=gx, score=float(pred.sgfr.patch_scores[gy, gx])),
        grid=list(pred.grid),
    )


def _bounds(result: Result) -> tuple[float, float, float, int]:
    s = result.pred.sgfr
    lo, hi = float(s.vmin), float(max(s.vmax, s.heatmap.max()))  # the peak bounds any image score
    digits = int(-np.floor(np.log10(max(hi - lo, 1e-9) / 100)))
    step = 10.0**-digits
    return np.floor(lo / step) * step, np.ceil(hi / step) * step, step, max(digits, 0)


def threshold_bounds(result: Result) -> tuple[float, float]:
    """The (min, max) of the result's threshold slider (:func:`threshold_range`)."""
    lo, hi, _, digits = _bounds(result)
    return round(float(lo), digits), round(float(hi), digits)


def threshold_range(result: Result) -> tuple[float, float, float]:
    """Slider (min, max, step) from the calibration: the normal median up to the colour-scale
    ceiling, extended to the map's peak so the worst region can always be isolated; rounded
    to a readable step (the result's threshold is snapped to it)."""
    lo, hi, step, digits = _bounds(result)
    snap = lambda v: round(float(v), digits)  # noqa: E731 (no float noise on screen)
    result.threshold = snap(np.clip(round(result.threshold / step) * step, lo, hi))
    return snap(lo), snap(hi), snap(step)


def patch_note(res: Result) -> str:
    """One line about the selected patch, for under the query image."""
    gy, gx = res.patch
    s = res.pred.sgfr
    err = float(s.patch_scores[gy, gx])
    return widgets.note_html(
        f"Selected patch: row {gy + 1}, column {gx + 1} of {res.pred.grid[0]}x{res.pred.grid[1]}",
        f"patch error {err:.3g} &middot; normal below {s.threshold:.3g}",
    )


# ----------------------------------------------------------------------------- views
def make_result(
    pred: Prediction,
    fit: Fit,
    name: str,
    image: Image.Image,
    truth: np.ndarray | None,
    reused: bool,
) -> Result:
    """Wrap a prediction with its display-size renders; the worst patch is selected."""
    display = viz.to_display(image)
    s, k = pred.sgfr, pred.knn
    renders = {
        "query": display,
        "sgfr": viz.overlay(display, s.heatmap, s.vmin, s.vmax),
        "knn": viz.overlay(display, k.heatmap, k.vmin, k.vmax),
    }
    small = viz.resize_map(s.heatmap, display.size)
    if truth is not None:
        truth = viz.resize_mask(truth, display.size)
    return Result(
        pred,
        fit,
        name,
        image,
        display,
        renders,
        small,
        truth,
        s.threshold,
        pred.top_patch(),
        reused,
    )


def _box(res: Result) -> tuple[int, int, int, int]:
    return viz.cell_box(res.display.size, res.pred.grid, *res.patch)


def views(res: Result, only_mask: bool = False) -> dict:
    """The four result images (selected patch framed) and the two colour bars."""
    box = _box(res)
    mask = viz.mask_overlay(res.display, res.small_map, res.threshold, res.truth)
    out: dict = {"mask": viz.mark_cell(mask, box)}
    if only_mask:
        return out
    for key in ("query", "sgfr", "knn"):
        out[key] = viz.mark_cell(res.renders[key], box)
    s, k = res.pred.sgfr, res.pred.knn
    bar = widgets.colorbar_html
    out["sgfr_bar"] = bar(s.vmin, s.vmax, s.threshold, s.score, "SGFR error")
    out["knn_bar"] = bar(k.vmin, k.vmax, k.threshold, k.score, "Distance to nearest")
    return out


def dimension_plot(res: Result) -> str:
    """HTML chart (inline SVG) of the selected patch's per-dimension reconstruction error."""
    det, pred = res.fit.detector, res.pred
    gy, gx = res.patch
    cal = det.calibration["sgfr"]
    row = gy * pred.grid[1] + gx
    title = f"Patch row {gy + 1}, column {gx + 1} (error {pred.sgfr.patch_scores[gy, gx]:.3g})"
    return chart.dimension_chart(
        pred.residuals[row], det.stages, cal.dim_typical, cal.dim_high, title
    )


def thumbnails(res: Result, top: int = 7) -> list[tuple[Image.Image, str]]:
    """The selected query patch, then the reference patches that rebuilt it, with weights."""
    gy, gx = res.patch
    sources = res.fit.detector.sources(res.pred, gy, gx, top=top)
    caption = "query patch"
    return viz.patch_thumbnails(
        res.display, _box(res), res.fit.refs, res.fit.scales, sources, caption
    )


def summary(numbers: dict) -> str:
    """HTML result cards."""
    return widgets.summary_html(numbers)


def bundle(res: Result, numbers: dict, folder: Path) -> Path:
    """Write the downloadable results zip for the current threshold."""
    s, k = res.pred.sgfr, res.pred.knn
    target = folder / f"{Path(res.name).stem or 'query'}_results.zip"
    for old in folder.glob("*.zip"):  # gradio serves its own copy: keep only the latest
        if old != target:
            old.unlink(missing_ok=True)
    return viz.write_bundle(
        target,
        res.query,
        {"sgfr": s.heatmap, "knn": k.heatmap},
        {"sgfr": (s.vmin, s.vmax), "knn": (k.vmin, k.vmax)},
        res.threshold,
        numbers,
    )
