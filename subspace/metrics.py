"""Anomaly-localization metrics: arrays in, floats out.

All metrics are exact and rank based. Pixels (or images) with equal scores form one threshold
step, so ties are scored like scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(a tie between a positive and a negative counts half for AUROC). Every metric sorts the
scores once and works on cumulative sums, so ~20 million pixels take a few seconds.

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


def _pixels(maps: ArrayOrList, masks: ArrayOrList) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and concatenate maps and masks.

    Returns:
        ``scores`` (P,) in the maps' dtype and ``labels`` (P,) bool, P = total pixel count.
    """
    map_list, mask_list = _as_list(maps, "maps"), _as_list(masks, "masks")
    if len(map_list) != len(mask_list):
        raise ValueError(f"Got {len(map_list)} maps but {len(mask_list)} masks; pass one each.")
    if not map_list:
        raise ValueError("No maps given; pass at least one (H, W) anomaly map.")
    for i, (m, k) in enumerate(zip(map_list, mask_list, strict=True)):
        if m.shape != k.shape:
            raise ValueError(
                f"maps[{i}] has shape {m.shape} but masks[{i}] has {k.shape}; resize the "
                "mask (nearest) or the map to the same size."
            )
    scores = np.concatenate([m.ravel() for m in map_list])
    labels = np.concatenate([k.ravel() > 0 for k in mask_list])
    return scores, labels


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


def _ranked(
    scores: np.ndarray, labels: np.ndarray, pos_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sort by score, highest first, and find where each group of equal scores ends.

    ``np.sort`` is an order of magnitude faster than ``np.argsort`` on big float arrays, so
    the normal scores are only sorted, the (usually few) anomalous ones are argsorted to
    carry their weights along, and a stable argsort merges the two sorted runs in O(P).

    Args:
        scores: (P,) real scores.
        labels: (P,) bool, True = positive (anomalous).
        pos_weights: optional (n_pos,) weights of the positives, in ``scores[labels]`` order.

    Returns:
        ``y`` (P,) bool labels in descending score order, ``w`` (P,) float64 weights in the
        same order (0 for negatives; None without ``pos_weights``) and ``ends`` (T,) the
        last sorted position of each of the T distinct score values.
    """
    neg = np.sort(scores[~labels])
    pos = scores[labels]
    pos_order = np.argsort(pos)
    merged = np.concatenate([neg, pos[pos_order]])  # two ascending runs
    order = np.argsort(merged, kind="stable")[::-1]  # descending; ties are grouped below
    s = merged[order]
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    y = order >= neg.size
    w = None
    if pos_weights is not None:
        w = np.concatenate([np.zeros(neg.size), pos_weights[pos_order]])[order]
    return y, w, ends


def _counts(y: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive counts (T,) at each distinct threshold, highest first."""
    tps = np.cumsum(y, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return tps, fps


def _require_both(labels: np.ndarray, what: str) -> None:
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        kind = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"{what} are all {kind}; AUROC/AP need both normal and anomalous examples. "
            "Evaluate on a set that contains both."
        )


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    """Trapezoidal area under the ROC curve through (0, 0) and every threshold."""
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def _ap(tps: np.ndarray, fps: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, R_0 = 0."""
    precision = tps / (tps + fps)
    recall = np.concatenate([[0.0], tps / tps[-1]])
    return float(np.sum(np.diff(recall) * precision))


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


def _pro(fps: np.ndarray, overlap: np.ndarray, max_fpr: float) -> float:
    """Normalized area under the PRO curve for FPR in [0, max_fpr].

    Args:
        fps: (T,) false-positive counts at each distinct threshold, highest first.
        overlap: (T,) mean region overlap at the same thresholds.
        max_fpr: integration limit in (0, 1].
    """
    if fps[-1] == 0:
        raise ValueError("Every pixel is anomalous; PRO needs normal pixels to measure FPR.")
    fpr = np.concatenate([[0.0], fps / fps[-1]])  # (T + 1,) from the point (0, 0)
    pro = np.concatenate([[0.0], overlap])
    # Cut the curve at max_fpr: keep points below it, interpolate the segment crossing it.
    k = int(np.searchsorted(fpr, max_fpr, side="left"))  # fpr[k - 1] < max_fpr <= fpr[k]
    x, p = fpr[:k], pro[:k]
    if k < fpr.size:
        t = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.append(x, max_fpr)
        p = np.append(p, pro[k - 1] + t * (pro[k] - pro[k - 1]))
    area = np.sum(np.diff(x) * (p[1:] + p[:-1])) / 2
    return float(area / max_fpr)


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
    scores, labels = _pixels(maps, masks)
    scores = _check_scores(scores, "maps")
    _require_both(labels, "The mask pixels")
    y, _, ends = _ranked(scores, labels)
    return _auroc(*_counts(y, ends))


def pixel_ap(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Pixel-level average precision (as scikit-learn's ``average_precision_score``).

    Args:
        maps: anomaly maps, list of (H_i, W_i) or one (N, H, W) array.
        masks: ground truth with the same shapes; values > 0 are anomalous.

    Returns:
        AP in [0, 1].
    """
    scores, labels = _pixels(maps, masks)
    scores = _check_scores(scores, "maps")
    _require_both(labels, "The mask pixels")
    y, _, ends = _ranked(scores, labels)
    return _ap(*_counts(y, ends))


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
    scores, labels = _pixels(maps, masks)
    scores = _check_scores(scores, "maps")
    weights = _region_weights(masks)
    y, w, ends = _ranked(scores, labels, weights)
    _, fps = _counts(y, ends)
    return _pro(fps, np.cumsum(w)[ends], max_fpr)


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
    _require_both(y, "The image labels")
    y, _, ends = _ranked(s, y)
    return _auroc(*_counts(y, ends))


def evaluate(
    maps: ArrayOrList,
    masks: ArrayOrList,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """All metrics at once, sorting the pixels only once.

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
    pix, gt = _pixels(maps, masks)
    pix = _check_scores(pix, "maps")
    _require_both(gt, "The mask pixels")
    y, w, ends = _ranked(pix, gt, _region_weights(masks))
    counts = _counts(y, ends)
    return {
        "pixel_auroc": _auroc(*counts),
        "pixel_ap": _ap(*counts),
        "pro": _pro(counts[1], np.cumsum(w)[ends], max_fpr),
        "image_auroc": image,
    }
