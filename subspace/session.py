"""Per-visitor state of the app: fits reused by reference content, the last result, its views.

The app keeps one :class:`Session` per browser tab in a ``gr.State``; nothing here is shared
between visitors except the read-only backbones (one per preset, loaded once per process).
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import viz, widgets
from .data import load_image
from .presets import DEFAULT_HUB, FALLBACK, PRESETS
from .uploads import Upload

if TYPE_CHECKING:  # torch and timm load on first use: the app's page is up seconds sooner
    from .backbone import Backbone
    from .detector import Detector, Prediction

log = logging.getLogger(__name__)

FITS_PER_SESSION = 2  # fitted detectors kept per visitor (e.g. to switch backbones back)
SESSION_TTL_S = 1800  # a visitor's state is dropped after this long without activity
MAX_SESSIONS = 64  # visitors' states kept in memory; the least recently active goes first
RATIO_DEFAULT = 0.25  # share of the bank kept by usage sampling
SAMPLING = "usage"

_BACKBONES: dict[str, Backbone] = {}
_BACKBONE_LOCK = threading.Lock()


def get_backbone(name: str) -> Backbone:
    """The shared, read-only backbone of preset ``name``, loaded once per process."""
    from .backbone import load_backbone

    with _BACKBONE_LOCK:
        if name not in _BACKBONES:
            _BACKBONES[name] = load_backbone(name)
        return _BACKBONES[name]


# ----------------------------------------------------------------------------- backbones
def auto_backbone(status: dict[str, str]) -> str:
    """What ``auto`` means given :func:`subspace.backbone.availability` output."""
    return DEFAULT_HUB if status.get(DEFAULT_HUB) in ("cached", "hub") else FALLBACK


def backbone_choices(status: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs for the backbone dropdown, each saying whether it can be used."""
    auto = auto_backbone(status)
    out = [(f"auto: {PRESETS[auto].label}", "auto")]
    for name, preset in PRESETS.items():
        st = status.get(name, "unavailable")
        mark = "" if st in ("bundled", "cached", "hub") else f" [{st}]"
        out.append((f"{preset.label}{mark}", name))
    return out


def hub_note(status: dict[str, str]) -> str:
    """One line for the UI about the Hub, empty when every Hub backbone is usable."""
    down = [n for n, s in status.items() if s.startswith("unavailable")]
    if not down:
        return ""
    return (
        "The Hugging Face Hub is unreachable, so the Hub backbones are unavailable; "
        f"the app uses the bundled **{PRESETS[FALLBACK].label}**."
    )


def choose_backbone(choice: str, status: dict[str, str]) -> tuple[str, str | None]:
    """Dropdown value -> (preset to use, warning for the visitor or None)."""
    name = auto_backbone(status) if choice in (None, "", "auto") else choice
    if name not in PRESETS:
        raise ValueError(f"Unknown backbone {choice!r}: pick one from the list.")
    if status.get(name, "").startswith("unavailable"):
        return FALLBACK, (
            f"{PRESETS[name].label} needs the Hugging Face Hub, which is unreachable: "
            f"using {PRESETS[FALLBACK].label} instead."
        )
    return name, None


def load_or_fallback(name: str) -> tuple[str, str | None]:
    """Load preset ``name`` (once per process); if its weights cannot be had after all, load
    the bundled one. Returns (preset loaded, warning for the visitor or None)."""
    try:
        get_backbone(name)
        return name, None
    except RuntimeError as err:
        if name == FALLBACK:
            raise
        log.warning("backbone %s failed, falling back to %s: %s", name, FALLBACK, err)
        get_backbone(FALLBACK)
        return FALLBACK, (
            f"{PRESETS[name].label} could not be loaded: using {PRESETS[FALLBACK].label} instead."
        )


# ----------------------------------------------------------------------------- state
@dataclass
class Fit:
    """A fitted detector and what the app needs to explain it."""

    key: str
    detector: Detector
    refs: list[Image.Image]  # display-size copies, for reference-patch thumbnails
    scales: list[float]  # display px per original px, per reference


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


@dataclass
class Session:
    """Everything one visitor has computed. Dropped (and its memory freed) on expiry."""

    fits: OrderedDict[str, Fit] = field(default_factory=OrderedDict)
    result: Result | None = None
    created: float = field(default_factory=time.time)
    folder: Path = field(  # this visitor's result bundles
        default_factory=lambda: Path(tempfile.gettempdir()) / "subspace-app" / uuid.uuid4().hex
    )

    def __post_init__(self) -> None:
        # Also when gradio drops the state without the delete callback (evicted, shut down).
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    def fit(
        self,
        uploads: Sequence[Upload],
        digest: str,
        backbone: str,
        ratio: float,
        progress: Callable[[float, str], None] | None = None,
    ) -> tuple[Fit, bool]:
        """Fitted detector for these references, backbone and ratio: reused or fitted now."""
        key = f"{digest}:{backbone}:{ratio:.4f}"
        if key in self.fits:
            self.fits.move_to_end(key)
            return self.fits[key], True
        from .detector import Config, Detector

        refs = [load_image(u.data, name=u.label) for u in uploads]  # ImageError if unusable
        config = Config(backbone=backbone, ratio=ratio, sampling=SAMPLING)
        det = Detector(config, backbone=get_backbone(backbone)).fit(refs, progress=progress)
        shown = [viz.to_display(im) for im in refs]
        fit = Fit(
            key, det, shown, [s.size[0] / im.size[0] for s, im in zip(shown, refs, strict=True)]
        )
        self.fits[key] = fit
        while len(self.fits) > FITS_PER_SESSION:
            self.fits.popitem(last=False)
        return fit, False

    def close(self) -> None:
        """Drop references to detectors and images so their memory can be returned."""
        self.fits.clear()
        self.result = None
        shutil.rmtree(self.folder, ignore_errors=True)


def close_session(session: Session | None) -> None:
    """``gr.State`` delete callback."""
    if isinstance(session, Session):
        session.close()


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


def threshold_range(result: Result) -> tuple[float, float, float]:
    """Slider (min, max, step) from the calibration: the normal median up to the colour-scale
    ceiling, extended to the map's peak so the worst region can always be isolated; rounded
    to a readable step (the result's threshold is snapped to it)."""
    s = result.pred.sgfr
    lo, hi = float(s.vmin), float(max(s.vmax, s.heatmap.max()))  # the peak bounds any image score
    digits = int(-np.floor(np.log10(max(hi - lo, 1e-9) / 100)))
    step = 10.0**-digits
    lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
    snap = lambda v: round(float(v), max(digits, 0))  # noqa: E731 (no float noise on screen)
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


def dimension_plot(res: Result):
    """Matplotlib figure of the selected patch's per-dimension reconstruction error."""
    det, pred = res.fit.detector, res.pred
    gy, gx = res.patch
    cal = det.calibration["sgfr"]
    row = gy * pred.grid[1] + gx
    title = f"Patch row {gy + 1}, column {gx + 1} (error {pred.sgfr.patch_scores[gy, gx]:.3g})"
    return viz.dimension_figure(
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


def tune_allocator(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Keep a long-running server's memory flat (glibc only; call once at start-up).

    glibc raises its mmap threshold after the first large free, and then serves image- and
    tensor-sized blocks from per-thread arenas that fragment across gradio's worker threads:
    the server's RSS crept up 18 % over 300 predictions. A fixed threshold returns such
    blocks to the system when freed; two arenas bound the fragmentation. Returns whether set.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
        return bool(
            libc.mallopt(m_mmap_threshold, mmap_threshold) and libc.mallopt(m_arena_max, arenas)
        )
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False


def warm_up(
    backbone: str, after: Callable[[], bool] | None = None, wait_s: float = 30.0
) -> threading.Thread:
    """Load ``backbone`` and run a tiny fit + predict in the background (first-call costs).

    ``after``: start once it returns True (polled for at most ``wait_s`` seconds), e.g. once
    the server is up, so the warm-up never delays the first page.
    """

    def run() -> None:
        from .detector import Config, Detector
        from .synthetic import texture

        t0 = time.perf_counter()
        while after is not None and not after() and time.perf_counter() - t0 < wait_s:
            time.sleep(0.1)
        try:  # one tiny image: loads the weights and primes torch without hogging the CPU
            image = Image.fromarray(texture((64, 64)))
            det = Detector(Config(backbone=backbone, size=64), backbone=get_backbone(backbone))
            det.fit([image]).predict(image)
            log.info("warm-up done (%s) in %.1f s", backbone, time.perf_counter() - t0)
        except Exception as err:  # only an optimisation
            log.warning("warm-up failed: %s", err)

    thread = threading.Thread(target=run, daemon=True, name="warm-up")
    thread.start()
    return thread
