"""Anomaly-localization metrics: arrays in, floats out.

All metrics are exact and rank based. Pixels (or images) with equal scores form one threshold
step, so ties are scored like scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(a tie between a positive and a negative counts half for AUROC). Every metric sorts the
normal scores once (in place) and searches them at each distinct anomalous score, so ~20
million pixels take a few seconds in about one extra copy of the maps' memory. To score many
images without keeping their maps, feed them one at a time to a ``PixelScores``.

``maps`` / ``masks`` are either a list of (H_i, W_i) arrays (sizes may differ per image), one
(N, H, W) array, or one (H, W) array for a single image. Masks may be bool, 0/1 or 0/255:
any value > 0 marks an anomalous pixel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

ArrayOrList = np.ndarray | Sequence[np.ndarray]


def _as_list(arrays: ArrayOrList, what: str) -> list[np.ndarray]:
    """Split the accepted input forms into a list of 2-D arrays."""
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 2:
            return [arrays]
        if arrays.ndim == 3:
            return list(arrays)
        raise ValueError(
            f"{what} must be (N, H, W), (H, W) or a list of (H, W) arrays, got shape "
            f"{arrays.shape}."
        )
    out = [np.asarray(a) for a in arrays]
    for i, a in enumerate(out):
        if a.ndim != 2:
            raise ValueError(f"{what}[{i}] must be a 2-D (H, W) array, got shape {a.shape}.")
    return out


class _Column:
    """A 1-D array filled by appends, in place.

    Capacity at least doubles when it runs out, and capacity not yet written costs no memory
    (the pages of a large ``np.empty`` are only committed when touched), so a generous
    ``capacity`` up front means the values are never copied.
    """

    def __init__(self, capacity: int = 0) -> None:
        self._data: np.ndarray | None = None
        self._capacity = capacity
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        need = self.size + values.size
        old = self._data
        dtype = values.dtype if old is None else np.promote_types(old.dtype, values.dtype)
        if old is None or need > old.size or dtype != old.dtype:
            self._data = np.empty(max(need, 2 * self.size, self._capacity), dtype)
            if old is not None:
                self._data[: self.size] = old[: self.size]
        self._data[self.size : need] = values
        self.size = need

    def take(self) -> np.ndarray:
        """The values (a view of the buffer); the column is empty afterwards."""
        out = self._data[: self.size] if self._data is not None else np.empty(0)
        self._data, self.size = None, 0
        return out


class PixelScores:
    """The pixels of a set of anomaly maps, gathered one image at a time.

    ``add`` writes an image's normal and anomalous scores and the PRO region of each anomalous
    pixel into growing buffers, so the caller can drop the map at once: an evaluation over
    hundreds of images holds one copy of its pixels, never the maps and a copy together.
    Pass ``capacity`` (the total pixel count, or an upper bound) to size the normal buffer
    once, so it is never copied.

    >>> pixels = PixelScores(capacity=sum(m.size for m, _ in pairs))  # doctest: +SKIP
    >>> for heatmap, mask in pairs:  # doctest: +SKIP
    ...     pixels.add(heatmap, mask)
    >>> pixels.metrics()  # doctest: +SKIP
    """

    def __init__(self, capacity: int = 0) -> None:
        self._neg = _Column(capacity)  # normal scores
        self._pos = _Column()  # anomalous scores, image by image, row-major
        self._region = _Column()  # global region id of each anomalous pixel
        self._areas = _Column()  # pixel count of each region
        self.n_images = 0

    @property
    def n_regions(self) -> int:
        return self._areas.size

    def add(self, heatmap: np.ndarray, mask: np.ndarray) -> None:
        """One image: its (H, W) map and its (H, W) mask (values > 0 are anomalous)."""
        where = f"maps[{self.n_images}]"
        heatmap, mask = np.asarray(heatmap), np.asarray(mask)
        if heatmap.ndim != 2:
            raise ValueError(f"{where} must be a 2-D (H, W) array, got shape {heatmap.shape}.")
        if heatmap.shape != mask.shape:
            raise ValueError(
                f"{where} has shape {heatmap.shape} but masks[{self.n_images}] has "
                f"{mask.shape}; resize the mask (nearest) or the map to the same size."
            )
        heatmap = _check_scores(heatmap, "maps")
        fg = mask > 0
        lab, n = ndimage.label(fg)  # 4-connectivity, per image
        self._neg.append(heatmap[~fg])
        self._pos.append(heatmap[fg])
        self._region.append((lab[fg] - 1 + self.n_regions).astype(np.int32))
        self._areas.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        self.n_images += 1

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Normal scores, ascending (sorted in place), and anomalous scores in mask order.

        Takes the scores out: the store is empty afterwards (``n_images`` is 0 again).
        """
        if not self.n_images:
            raise ValueError("No maps given; pass at least one (H, W) anomaly map.")
        neg, pos = self._neg.take(), self._pos.take()
        self.n_images = 0
        dtype = np.promote_types(neg.dtype, pos.dtype)
        neg = neg.astype(dtype, copy=False)
        neg.sort()
        return neg, pos.astype(dtype, copy=False)

    def region_weights(self) -> np.ndarray:
        """PRO weight of each anomalous pixel, in ``split``'s order: 1 / (|r| * R).

        Returns:
            (P_pos,) float64 weights summing to 1.
        """
        if self.n_regions == 0:
            raise ValueError(
                "No anomalous regions in the masks; PRO needs at least one image with a defect."
            )
        areas = self._areas.take()  # (R,)
        return (1.0 / (areas * areas.size))[self._region.take()]

    def metrics(self, max_fpr: float = 0.3) -> dict[str, float]:
        """Pixel AUROC, pixel AP and PRO from one sort of the normal pixels."""
        _check_max_fpr(max_fpr)
        neg, pos = self.split()
        _require_both(neg, pos, "The mask pixels")
        steps = _steps(neg, pos, self.region_weights())
        return {"pixel_auroc": _auroc(steps), "pixel_ap": _ap(steps), "pro": _pro(steps, max_fpr)}


def _collect(maps: ArrayOrList, masks: ArrayOrList) -> PixelScores:
    map_list, mask_list = _as_list(maps, "maps"), _as_list(masks, "masks")
    if len(map_list) != len(mask_list):
        raise ValueError(f"Got {len(map_list)} maps but {len(mask_list)} masks; pass one each.")
    pixels = PixelScores(capacity=sum(m.size for m in map_list))  # sized once: no regrowth
    for m, k in zip(map_list, mask_list, strict=True):
        pixels.add(m, k)
    return pixels


class _Steps(NamedTuple):
    """The curves at each of the T distinct positive scores, highest first (they only move
    there): ``count`` positives at the score, ``tp`` positives >= it, ``fp_ge`` / ``fp_gt``
    negatives >= / > it, ``cum_w`` the positives' weight >= it (None without weights)."""

    count: np.ndarray
    tp: np.ndarray
    fp_ge: np.ndarray
    fp_gt: np.ndarray
    cum_w: np.ndarray | None
    n_neg: int
    n_pos: int


def _steps(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray | None = None) -> _Steps:
    """Every metric's curve from one sort of the positives.

    Args:
        neg: (P_neg,) ascending normal scores. pos: (P_pos,) anomalous scores.
        weights: optional (P_pos,) weights of the positives (PRO), in ``pos`` order.
    """
    order = np.argsort(pos, kind="stable")[::-1]  # descending
    p = pos[order]
    w = None if weights is None else weights[order]
    del order  # the largest temporary: free it before the next ones
    last = np.append(np.flatnonzero(p[1:] != p[:-1]), p.size - 1)  # end of each tie group
    u = p[last]
    del p
    fp_ge = neg.size - np.searchsorted(neg, u, side="left")
    fp_gt = neg.size - np.searchsorted(neg, u, side="right")
    del u
    cum_w = None if w is None else np.cumsum(w)[last]
    tp = last + 1
    count = np.diff(tp, prepend=0)
    return _Steps(count, tp, fp_ge, fp_gt, cum_w, neg.size, pos.size)


def _check_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.dtype == bool:  # hard 0/1 predictions: a valid, if coarse, ranking
        scores = scores.astype(np.uint8)
    if not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {scores.dtype}.")
    if np.iscomplexobj(scores):
        raise ValueError(f"{what} must be real numbers, got dtype {scores.dtype}.")
    if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or inf; replace them before computing metrics.")
    return scores


def _require_both(neg: np.ndarray, pos: np.ndarray, what: str) -> None:
    if neg.size == 0 or pos.size == 0:
        kind = "anomalous" if pos.size else "normal"
        raise ValueError(
            f"{what} are all {kind}; AUROC/AP need both normal and anomalous examples. "
            "Evaluate on a set that contains both."
        )


def _auroc(s: _Steps) -> float:
    """Mann-Whitney AUROC (= trapezoidal ROC area): P(pos > neg) + P(pos == neg) / 2."""
    below = s.n_neg - s.fp_ge  # negatives strictly below each positive score
    tied = s.fp_ge - s.fp_gt
    return float(np.sum(s.count * (below + 0.5 * tied)) / (s.n_pos * s.n_neg))


def _ap(s: _Steps) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, R_0 = 0."""
    return float(np.sum(s.count / s.n_pos * s.tp / (s.tp + s.fp_ge)))


def _pro(s: _Steps, max_fpr: float) -> float:
    """Normalized area under the PRO curve for FPR in [0, max_fpr].

    Between two distinct positive scores only the FPR moves (a flat segment); at a positive
    score, the tied negatives and the positives move together (a sloped segment), exactly as
    a curve through every distinct threshold.
    """
    if s.n_neg == 0:
        raise ValueError("Every pixel is anomalous; PRO needs normal pixels to measure FPR.")
    # Points past the first one at or beyond max_fpr are never reached: drop them early.
    n = int(np.searchsorted(s.fp_gt / s.n_neg, max_fpr, side="left")) + 1
    fp_gt, fp_ge, cum_w = s.fp_gt[:n], s.fp_ge[:n], s.cum_w[:n]
    before = np.concatenate([[0.0], cum_w[:-1]])  # overlap just above each threshold
    x = np.stack([fp_gt, fp_ge], 1).ravel() / s.n_neg  # (2n,) flat end, then sloped end
    y = np.stack([before, cum_w], 1).ravel()
    fpr = np.concatenate([[0.0], x, [1.0]])
    pro = np.concatenate([[0.0], y, [s.cum_w[-1]]])
    # Cut the curve at max_fpr: keep points below it, interpolate the segment crossing it.
    k = int(np.searchsorted(fpr, max_fpr, side="left"))  # fpr[k - 1] < max_fpr <= fpr[k]
    xs, ps = fpr[:k], pro[:k]
    t = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
    xs, ps = np.append(xs, max_fpr), np.append(ps, pro[k - 1] + t * (pro[k] - pro[k - 1]))
    return float(np.sum(np.diff(xs) * (ps[1:] + ps[:-1])) / 2 / max_fpr)


def _check_max_fpr(max_fpr: float) -> None:
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}; the usual value is 0.3.")


def pixel_auroc(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Pixel-level area under the ROC curve.

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array; higher = more anomalous.
        masks: ground truth with the same shapes; values > 0 are anomalous.

    Returns:
        AUROC in [0, 1].
    """
    neg, pos = _collect(maps, masks).split()
    _require_both(neg, pos, "The mask pixels")
    return _auroc(_steps(neg, pos))


def pixel_ap(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Pixel-level average precision (as scikit-learn's ``average_precision_score``).

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous.

    Returns:
        AP in [0, 1].
    """
    neg, pos = _collect(maps, masks).split()
    _require_both(neg, pos, "The mask pixels")
    return _ap(_steps(neg, pos))


def pro_score(maps: ArrayOrList, masks: ArrayOrList, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    Regions are the 4-connected components of each mask. At each threshold, the overlap of a
    region is the fraction of its pixels above the threshold; PRO is the mean over all
    regions of all images. A perfect map scores 1.0.

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous. Images with empty
            masks contribute only normal pixels.
        max_fpr: upper limit of the integration, in (0, 1].

    Returns:
        Normalized PRO area in [0, 1].
    """
    _check_max_fpr(max_fpr)
    pixels = _collect(maps, masks)
    neg, pos = pixels.split()
    return _pro(_steps(neg, pos, pixels.region_weights()), max_fpr)


def image_auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Image-level AUROC.

    Args:
        scores: (N,) image anomaly scores; higher = more anomalous.
        labels: (N,) ground truth; values > 0 (or True) are anomalous.

    Returns:
        AUROC in [0, 1].
    """
    s = _check_scores(np.asarray(scores).ravel(), "scores")
    y = np.asarray(labels).ravel() > 0
    if s.shape != y.shape:
        raise ValueError(f"Got {s.size} scores but {y.size} labels; pass one label per score.")
    neg, pos = np.sort(s[~y]), s[y]
    _require_both(neg, pos, "The image labels")
    return _auroc(_steps(neg, pos))


def evaluate(
    maps: ArrayOrList,
    masks: ArrayOrList,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """All metrics at once, sorting the normal pixels only once.

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground-truth masks with the same shapes.
        scores: (N,) image anomaly scores.
        labels: (N,) image labels, > 0 = anomalous.
        max_fpr: PRO integration limit.

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pro", "image_auroc"}`` -> float.
    """
    _check_max_fpr(max_fpr)
    image = image_auroc(scores, labels)  # cheap: fail on bad labels before the pixel work
    return _collect(maps, masks).metrics(max_fpr) | {"image_auroc": image}
