"""Anomaly-localization metrics: arrays in, floats out.

All metrics are exact and rank based. Pixels (or images) with equal scores form one threshold
step, so ties are scored like scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(a tie between a positive and a negative counts half for AUROC).

The pixel metrics read the maps twice: the first pass keeps the anomalous pixels (scores and
PRO regions), the second counts, image by image, how many normal pixels score at or above each
distinct anomalous score, which is all that AUROC, AP and PRO need. Memory therefore grows with
the anomalous pixels only: ``pixel_metrics`` takes a function that produces the maps on demand,
so an evaluation never has to hold the maps of a whole test set.

``maps`` / ``masks`` are either a list of (H_i, W_i) arrays (sizes may differ per image), one
(N, H, W) array, or one (H, W) array for a single image. Masks may be bool, 0/1 or 0/255:
any value > 0 marks an anomalous pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

ArrayOrList = np.ndarray | Sequence[np.ndarray]

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: pixels touching at a corner are one region


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
    """A 1-D array filled by appends, in place; capacity at least doubles when it runs out."""

    def __init__(self) -> None:
        self._data: np.ndarray | None = None
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        need = self.size + values.size
        old = self._data
        dtype = values.dtype if old is None else np.promote_types(old.dtype, values.dtype)
        if old is None or need > old.size or dtype != old.dtype:
            self._data = np.empty(max(need, 2 * self.size), dtype)
            if old is not None:
                self._data[: self.size] = old[: self.size]
        self._data[self.size : need] = values
        self.size = need

    def values(self) -> np.ndarray:
        return self._data[: self.size] if self._data is not None else np.empty(0)


Pairs = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


class _Anomalous:
    """First pass: the anomalous pixels' scores and PRO regions, image by image.

    Normal pixels are only counted. Each image's fingerprint (pixel count, sum of its map)
    lets the second pass check that it saw the very same maps.
    """

    def __init__(self) -> None:
        self.pos = _Column()  # anomalous scores, image by image, row-major
        self.region = _Column()  # global region id of each anomalous pixel
        self.areas = _Column()  # pixel count of each region
        self.fingerprints: list[tuple[int, float]] = []
        self.n_neg = 0

    def add(self, heatmap: np.ndarray, mask: np.ndarray) -> None:
        heatmap, fg = _checked_pair(heatmap, mask, len(self.fingerprints))
        lab, n = ndimage.label(fg, structure=EIGHT)  # per image, as MVTec's AU-PRO does
        self.pos.append(heatmap[fg])
        self.region.append((lab[fg] - 1 + self.areas.size).astype(np.int32))
        self.areas.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        self.n_neg += heatmap.size - int(np.count_nonzero(fg))
        self.fingerprints.append(_fingerprint(heatmap))

    def region_weights(self) -> np.ndarray:
        """(P_pos,) PRO weight of each anomalous pixel, 1 / (|r| * R), summing to 1."""
        areas = self.areas.values()
        return (1.0 / (areas * areas.size))[self.region.values()]


def _checked_pair(heatmap, mask, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``i``'s (H, W) map as numbers and its mask as bool, or a clear ValueError."""
    heatmap, mask = np.asarray(heatmap), np.asarray(mask)
    if heatmap.ndim != 2:
        raise ValueError(f"maps[{i}] must be a 2-D (H, W) array, got shape {heatmap.shape}.")
    if heatmap.shape != mask.shape:
        raise ValueError(
            f"maps[{i}] has shape {heatmap.shape} but masks[{i}] has {mask.shape}; resize the "
            "mask (nearest) or the map to the same size."
        )
    return _check_scores(heatmap, "maps"), mask > 0


def _fingerprint(heatmap: np.ndarray) -> tuple[int, float]:
    return heatmap.size, float(heatmap.sum(dtype=np.float64))


class _Normals:
    """Second pass: how many normal pixels score >= and > each distinct anomalous score.

    ``u``: the T distinct anomalous scores, ascending. Each image's normal scores are sorted
    and searched in ``u``, then only the counts are kept, so memory grows with the anomalous
    pixels, never with the normal ones.
    """

    def __init__(self, u: np.ndarray) -> None:
        self.u = u
        self._at_most = np.zeros(u.size + 1, np.int64)  # [j]: negatives with j of u <= them
        self._tied = np.zeros(u.size, np.int64)  # [i]: negatives equal to u[i]

    def add(self, neg: np.ndarray) -> None:
        neg = np.sort(neg, axis=None)  # sorted keys: the search runs in cache order
        below = int(np.searchsorted(neg, self.u[0], side="left"))  # under every anomalous score
        self._at_most[0] += below
        neg = neg[below:]
        j = np.searchsorted(self.u, neg, side="right")  # ascending, >= 1 from here on
        _add_runs(self._at_most, j)
        _add_runs(self._tied, j[self.u[j - 1] == neg] - 1)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(fp_ge, fp_gt), each (T,) in ``u``'s order: negatives >= / > each score."""
        ge = np.cumsum(self._at_most[::-1])[::-1][1:]  # negatives with more than i of u <= them
        return ge, ge - self._tied


def _add_runs(hist: np.ndarray, j: np.ndarray) -> None:
    """hist[j] += 1 for every entry of the ascending index array ``j``, one add per run."""
    if j.size:
        starts = np.flatnonzero(np.diff(j, prepend=-1))
        hist[j[starts]] += np.diff(starts, append=j.size)


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


def _steps(pos: np.ndarray, weights: np.ndarray | None, normals: Callable) -> _Steps:
    """Every metric's curve from one sort of the positives.

    Args:
        pos: (P_pos,) anomalous scores. weights: optional (P_pos,) weights of the positives
            (PRO), in ``pos`` order.
        normals: ``normals(u)`` -> (fp_ge, fp_gt, n_neg) for ``u`` the distinct anomalous
            scores, ascending.
    """
    order = np.argsort(pos, kind="stable")[::-1]  # descending
    p = pos[order]
    w = None if weights is None else weights[order]
    del order  # the largest temporary: free it before the next ones
    last = np.append(np.flatnonzero(p[1:] != p[:-1]), p.size - 1)  # end of each tie group
    u = p[last]
    del p
    fp_ge, fp_gt, n_neg = normals(np.ascontiguousarray(u[::-1]))
    del u
    cum_w = None if w is None else np.cumsum(w)[last]
    tp = last + 1
    count = np.diff(tp, prepend=0)
    return _Steps(count, tp, fp_ge[::-1], fp_gt[::-1], cum_w, n_neg, pos.size)


def pixel_metrics(pairs: Pairs, max_fpr: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, pixel AP and PRO of maps that are produced on demand, in two passes.

    ``pairs()`` must return a fresh iterable of (heatmap, mask) pairs, the same each time: it
    is called twice. The first pass keeps the anomalous pixels (scores and regions), the
    second counts the normal pixels against them, so memory grows with the anomalous pixels
    only, however many images there are. A second pass that sees different maps raises.

    >>> pixel_metrics(lambda: zip(maps, masks))  # doctest: +SKIP
    """
    _check_max_fpr(max_fpr)
    first = _Anomalous()
    for heatmap, mask in pairs():
        first.add(heatmap, mask)
    if not first.fingerprints:
        raise ValueError("No maps given; pass at least one (H, W) anomaly map.")
    pos = first.pos.values()
    _require_both(first.n_neg, pos.size, "The mask pixels")

    def normals(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        second, i = _Normals(u), 0
        for i, (heatmap, mask) in enumerate(pairs()):
            heatmap, fg = _checked_pair(heatmap, mask, i)
            if i >= len(first.fingerprints) or _fingerprint(heatmap) != first.fingerprints[i]:
                raise RuntimeError(f"maps[{i}] changed between the two passes over the maps")
            second.add(heatmap[~fg])
        if i + 1 != len(first.fingerprints):
            raise RuntimeError("the second pass over the maps saw fewer maps than the first")
        return *second.counts(), first.n_neg

    steps = _steps(pos, first.region_weights(), normals)
    return {"pixel_auroc": _auroc(steps), "pixel_ap": _ap(steps), "pro": _pro(steps, max_fpr)}


def _pairs(maps: ArrayOrList, masks: ArrayOrList) -> Pairs:
    map_list, mask_list = _as_list(maps, "maps"), _as_list(masks, "masks")
    if len(map_list) != len(mask_list):
        raise ValueError(f"Got {len(map_list)} maps but {len(mask_list)} masks; pass one each.")
    return lambda: zip(map_list, mask_list, strict=True)


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


def _require_both(n_neg: int, n_pos: int, what: str) -> None:
    if n_neg == 0 or n_pos == 0:
        kind = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"{what} are all {kind}; AUROC, AP and PRO need both normal and anomalous "
            "examples. Evaluate on a set that contains both."
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
    return pixel_metrics(_pairs(maps, masks))["pixel_auroc"]


def pixel_ap(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Pixel-level average precision (as scikit-learn's ``average_precision_score``).

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous.

    Returns:
        AP in [0, 1].
    """
    return pixel_metrics(_pairs(maps, masks))["pixel_ap"]


def pro_score(maps: ArrayOrList, masks: ArrayOrList, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    Regions are the 8-connected components of each mask (as in MVTec's AU-PRO code). At each
    threshold, the overlap of a region is the fraction of its pixels above the threshold; PRO
    is the mean over all regions of all images. A perfect map scores 1.0.

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous. Images with empty
            masks contribute only normal pixels.
        max_fpr: upper limit of the integration, in (0, 1].

    Returns:
        Normalized PRO area in [0, 1].
    """
    return pixel_metrics(_pairs(maps, masks), max_fpr)["pro"]


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
    neg, pos = s[~y], s[y]
    _require_both(neg.size, pos.size, "The image labels")

    def normals(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        counter = _Normals(u)
        counter.add(neg)
        return *counter.counts(), neg.size

    return _auroc(_steps(pos, None, normals))


def evaluate(
    maps: ArrayOrList,
    masks: ArrayOrList,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """All metrics at once, from two passes over the maps.

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
    return pixel_metrics(_pairs(maps, masks), max_fpr) | {"image_auroc": image}
