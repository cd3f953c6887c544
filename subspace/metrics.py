"""Anomaly-localization metrics: arrays in, floats out.

All metrics are exact and rank based. Pixels (or images) with equal scores form one threshold
step, so ties are scored like scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(a tie between a positive and a negative counts half for AUROC). Every metric sorts the
normal scores once (in place) and searches them at each distinct anomalous score, so ~20
million pixels take a few seconds in about one extra copy of the maps' memory.

``maps`` / ``masks`` are either a list of (H_i, W_i) arrays (sizes may differ per image), one
(N, H, W) array, or one (H, W) array for a single image. Masks may be bool, 0/1 or 0/255:
any value > 0 marks an anomalous pixel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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


def _split(maps: ArrayOrList, masks: ArrayOrList) -> tuple[np.ndarray, np.ndarray]:
    """Normal pixel scores, sorted, and anomalous pixel scores, in mask order.

    Only the normal scores are copied and sorted (in place): no full-size argsort, so memory
    stays near one copy of the maps even for tens of millions of pixels.

    Returns:
        ``neg`` (P_neg,) ascending and ``pos`` (P_pos,) in row-major mask order, image by image.
    """
    map_list, mask_list = _as_list(maps, "maps"), _as_list(masks, "masks")
    if len(map_list) != len(mask_list):
        raise ValueError(f"Got {len(map_list)} maps but {len(mask_list)} masks; pass one each.")
    if not map_list:
        raise ValueError("No maps given; pass at least one (H, W) anomaly map.")
    n_pos = 0
    for i, (m, k) in enumerate(zip(map_list, mask_list, strict=True)):
        if m.shape != k.shape:
            raise ValueError(
                f"maps[{i}] has shape {m.shape} but masks[{i}] has {k.shape}; resize the "
                "mask (nearest) or the map to the same size."
            )
        map_list[i] = _check_scores(m, "maps")
        n_pos += int(np.count_nonzero(k > 0))
    n_neg = sum(m.size for m in map_list) - n_pos
    dtype = np.result_type(*(m.dtype for m in map_list))
    neg, pos = np.empty(n_neg, dtype), np.empty(n_pos, dtype)  # filled in place: one copy
    a = b = 0
    for m, k in zip(map_list, mask_list, strict=True):
        fg = k > 0
        n = int(np.count_nonzero(fg))
        neg[a : a + m.size - n] = m[~fg]
        pos[b : b + n] = m[fg]
        a, b = a + m.size - n, b + n
    neg.sort()
    return neg, pos


def _steps(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray | None = None):
    """The curves at each distinct positive score, highest first (they only move there).

    Args:
        neg: (P_neg,) ascending normal scores. pos: (P_pos,) anomalous scores.
        weights: optional (P_pos,) weights of the positives (PRO), in ``pos`` order.

    Returns:
        ``count`` positives at each threshold, ``tp`` positives >= it, ``fp_ge`` / ``fp_gt``
        negatives >= / > it, and ``cum_w`` the positives' weight >= it (None without weights);
        each (T,) for the T distinct positive scores.
    """
    order = np.argsort(pos, kind="stable")[::-1]  # descending
    p = pos[order]
    last = np.append(np.flatnonzero(p[1:] != p[:-1]), p.size - 1)  # end of each tie group
    u = p[last]
    tp = last + 1
    count = np.diff(np.concatenate([[0], tp]))
    fp_ge = neg.size - np.searchsorted(neg, u, side="left")
    fp_gt = neg.size - np.searchsorted(neg, u, side="right")
    cum_w = None if weights is None else np.cumsum(weights[order])[last]
    return count, tp, fp_ge, fp_gt, cum_w


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


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney AUROC (= trapezoidal ROC area): P(pos > neg) + P(pos == neg) / 2."""
    count, _, fp_ge, fp_gt, _ = _steps(neg, pos)
    below = neg.size - fp_ge  # negatives strictly below each positive score
    tied = fp_ge - fp_gt
    return float(np.sum(count * (below + 0.5 * tied)) / (pos.size * neg.size))


def _ap(neg: np.ndarray, pos: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, R_0 = 0."""
    count, tp, fp_ge, _, _ = _steps(neg, pos)
    return float(np.sum(count / pos.size * tp / (tp + fp_ge)))


def _region_weights(masks: ArrayOrList) -> np.ndarray:
    """PRO weight of each anomalous pixel: 1 / (|r| * R) for a pixel of region r.

    Args:
        masks: the ground-truth masks, in the same order as the flattened maps.

    Returns:
        (n_pos,) float64 weights in ``labels``-flattening order (the order of
        ``scores[labels]``), summing to 1.
    """
    ids, offset = [], 0
    for mask in _as_list(masks, "masks"):
        fg = mask > 0
        lab, n = ndimage.label(fg)  # 4-connectivity, labelled per image
        ids.append(lab[fg] + offset)  # (n_pos_i,) region ids, row-major like ravel()
        offset += n
    if offset == 0:
        raise ValueError(
            "No anomalous regions in the masks; PRO needs at least one image with a defect."
        )
    region = np.concatenate(ids) - 1  # (n_pos,) region id in 0..R-1
    sizes = np.bincount(region, minlength=offset)  # (R,)
    return (1.0 / (sizes * offset))[region]


def _pro(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray, max_fpr: float) -> float:
    """Normalized area under the PRO curve for FPR in [0, max_fpr].

    Between two distinct positive scores only the FPR moves (a flat segment); at a positive
    score, the tied negatives and the positives move together (a sloped segment), exactly as
    a curve through every distinct threshold.
    """
    if neg.size == 0:
        raise ValueError("Every pixel is anomalous; PRO needs normal pixels to measure FPR.")
    _, _, fp_ge, fp_gt, cum_w = _steps(neg, pos, weights)
    before = np.concatenate([[0.0], cum_w[:-1]])  # overlap just above each threshold
    x = np.stack([fp_gt, fp_ge], 1).ravel() / neg.size  # (2T,) flat end, then sloped end
    y = np.stack([before, cum_w], 1).ravel()
    fpr = np.concatenate([[0.0], x, [1.0]])
    pro = np.concatenate([[0.0], y, [cum_w[-1]]])
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
    neg, pos = _split(maps, masks)
    _require_both(neg, pos, "The mask pixels")
    return _auroc(neg, pos)


def pixel_ap(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Pixel-level average precision (as scikit-learn's ``average_precision_score``).

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous.

    Returns:
        AP in [0, 1].
    """
    neg, pos = _split(maps, masks)
    _require_both(neg, pos, "The mask pixels")
    return _ap(neg, pos)


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
    neg, pos = _split(maps, masks)
    return _pro(neg, pos, _region_weights(masks), max_fpr)


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
    return _auroc(neg, pos)


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
    neg, pos = _split(maps, masks)
    _require_both(neg, pos, "The mask pixels")
    return {
        "pixel_auroc": _auroc(neg, pos),
        "pixel_ap": _ap(neg, pos),
        "pro": _pro(neg, pos, _region_weights(masks), max_fpr),
        "image_auroc": image,
    }
