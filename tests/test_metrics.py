"""Metrics against hand-computed values and brute-force references.

The expected numbers below were worked out by hand (reasoning in the comments); on the same
inputs scikit-learn's roc_auc_score / average_precision_score give the same values.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from subspace.metrics import (
    evaluate,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pixel_metrics,
    pro_score,
)


def _row(values) -> np.ndarray:
    """A (1, n) 'image' so that 1-D toy data can go through the pixel metrics."""
    return np.asarray(values, dtype=float)[None, :]


# ---------------------------------------------------------------- brute-force references


def _auroc_pairs(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), over all (pos, neg) pairs."""
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _ap_loop(scores: np.ndarray, labels: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, one threshold at a time."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        hit = scores >= t
        recall = (hit & labels).sum() / labels.sum()
        ap += (recall - prev_recall) * (hit & labels).sum() / hit.sum()
        prev_recall = recall
    return ap


# ---------------------------------------------------------------- AUROC / AP


def test_auroc_and_ap_hand_computed():
    # Descending: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg).
    # AUROC: of the 4 (pos, neg) pairs only (0.35, 0.4) is mis-ordered -> 3/4.
    # AP: thresholds give (R, P) = (1/2, 1), (1/2, 1/2), (1, 2/3), (1, 1/2)
    #     -> 1/2 * 1 + 0 + 1/2 * 2/3 + 0 = 5/6.
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert image_auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert pixel_auroc(_row(scores), _row(labels)) == pytest.approx(0.75, abs=1e-12)
    assert pixel_ap(_row(scores), _row(labels)) == pytest.approx(5 / 6, abs=1e-12)


def test_ties_form_one_step():
    # pos = {0.5, 0.5}, neg = {0.5, 0.2}. Pairs: each pos ties one neg (1/2) and beats the
    # other (1) -> (1.5 + 1.5) / 4 = 0.75. AP: the single threshold 0.5 holds both positives
    # and one negative, so R jumps 0 -> 1 at P = 2/3 -> AP = 2/3 (not 1, as it would be if the
    # tie were broken in the positives' favour).
    scores, labels = [0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0]
    assert image_auroc(scores, labels) == pytest.approx(0.75, abs=1e-12)
    assert pixel_ap(_row(scores), _row(labels)) == pytest.approx(2 / 3, abs=1e-12)


def test_constant_scores():
    # One threshold: ROC goes straight from (0, 0) to (1, 1) -> 0.5; AP = prevalence = 1/4.
    scores, labels = np.zeros(8), np.array([1, 0, 0, 0, 1, 0, 0, 0])
    assert image_auroc(scores, labels) == pytest.approx(0.5, abs=1e-12)
    assert pixel_ap(_row(scores), _row(labels)) == pytest.approx(0.25, abs=1e-12)


def test_perfect_and_inverted_maps():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:6] = True
    perfect = mask.astype(float)
    assert pixel_auroc(perfect, mask) == 1.0
    assert pixel_ap(perfect, mask) == 1.0
    assert pro_score(perfect, mask) == pytest.approx(1.0, abs=1e-12)
    assert pixel_auroc(1.0 - perfect, mask) == 0.0
    assert pro_score(1.0 - perfect, mask) == 0.0  # no region pixel before FPR reaches 1
    assert image_auroc([0.1, 0.9], [0, 1]) == 1.0
    assert image_auroc([0.9, 0.1], [0, 1]) == 0.0


def test_matches_brute_force_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 300))
        scores = rng.integers(0, int(rng.integers(1, 12)), n).astype(float)  # many ties
        labels = rng.random(n) < 0.3
        labels[:2] = [True, False]
        assert image_auroc(scores, labels) == pytest.approx(_auroc_pairs(scores, labels), 1e-12)
        assert pixel_ap(_row(scores), _row(labels)) == pytest.approx(
            _ap_loop(scores, labels), 1e-12
        )


def test_input_forms_agree():
    # A list of differently sized maps, masks as bool / 0-1 / 0-255, and an (N, H, W) stack.
    rng = np.random.default_rng(1)
    maps = [rng.random((6, 5)), rng.random((4, 7)).astype(np.float32)]
    masks = [rng.random((6, 5)) < 0.3, rng.random((4, 7)) < 0.3]
    ref = pixel_auroc(maps, masks)
    assert pixel_auroc(maps, [m.astype(np.uint8) * 255 for m in masks]) == ref
    assert pixel_auroc(maps, [m.astype(int) for m in masks]) == ref
    stack, stack_masks = rng.random((3, 5, 5)), rng.random((3, 5, 5)) < 0.3
    assert pixel_ap(stack, stack_masks) == pixel_ap(list(stack), list(stack_masks))


# ---------------------------------------------------------------- PRO


def _two_regions(low_r2: float):
    """Two images, two regions of different size (2 px and 4 px) and 10 normal pixels."""
    mask_a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])  # r1: 2 px
    map_a = np.array([[0.9, 0.9, 0.8, 0.5], [0.5, 0.0, 0.0, 0.0]])  # 6 normals: .8 .5 .5 0 0 0
    mask_b = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])  # r2: 4 px (one 2x2 block)
    map_b = np.array([[0.7, 0.7, 0.0, 0.0], [low_r2, low_r2, 0.0, 0.0]])  # 4 normals at 0
    return [map_a, map_b], [mask_a, mask_b]


def test_pro_two_regions_hand_computed():
    # Each region weighs 1/2 whatever its size. Groups by descending score:
    #   0.9: both r1 px           -> (FPR 0,   PRO 1/2)
    #   0.8: 1 normal of 10       -> (0.1, 1/2)
    #   0.7: half of r2           -> (0.1, 3/4)
    #   0.5: 2 normals            -> (0.3, 3/4)
    #   0.1: rest of r2           -> (0.3, 1)
    #   0.0: 7 normals            -> (1,   1)
    # Area to 0.3 = 0.1 * 1/2 + 0.2 * 3/4 = 0.2  -> / 0.3 = 2/3
    # Area to 0.2 = 0.05 + 0.1 * 3/4 = 0.125     -> / 0.2 = 0.625
    # Area to 1.0 = 0.05 + 0.15 + 0.7 * 1 = 0.9  -> / 1.0 = 0.9
    maps, masks = _two_regions(low_r2=0.1)
    assert pro_score(maps, masks) == pytest.approx(2 / 3, abs=1e-12)
    assert pro_score(maps, masks, max_fpr=0.2) == pytest.approx(0.625, abs=1e-12)
    assert pro_score(maps, masks, max_fpr=1.0) == pytest.approx(0.9, abs=1e-12)


def test_pro_interpolates_the_segment_crossing_max_fpr():
    # Now the last two r2 px tie with 2 normals at 0.5: one group, one sloped segment
    # (0.1, 3/4) -> (0.3, 1). At FPR 0.2 the curve is at 7/8, so
    # area to 0.2 = 0.05 + 0.1 * (3/4 + 7/8) / 2 = 0.13125 -> / 0.2 = 0.65625,
    # area to 0.3 = 0.05 + 0.2 * (3/4 + 1) / 2 = 0.225    -> / 0.3 = 0.75.
    maps, masks = _two_regions(low_r2=0.5)
    assert pro_score(maps, masks, max_fpr=0.2) == pytest.approx(0.65625, abs=1e-12)
    assert pro_score(maps, masks, max_fpr=0.3) == pytest.approx(0.75, abs=1e-12)


def test_pro_regions_are_8_connected_as_mvtecs_au_pro():
    # (0,0) touches (1,1) only diagonally: with 8-connectivity (MVTec's AU-PRO code labels
    # with structure=np.ones((3, 3))) these are one region of 3 pixels. 6 normals, one at 0.75.
    #   1.0: 1 of 3         -> (0,   1/3)      (4-connected, two regions: 1/2)
    #   0.75: 1 normal      -> (1/6, 1/3)
    #   0.5: all 3          -> (1/6, 1)
    #   0: 5 normals        -> (1,   1)
    # Area to 1 = 1/6 * 1/3 + 5/6 * 1 = 8/9 (4-connected: 11/12).
    mask = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    amap = np.array([[1.0, 0.75, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    assert pro_score(amap, mask, max_fpr=1.0) == pytest.approx(8 / 9, abs=1e-12)


def test_pro_empty_masks_add_only_normal_pixels():
    maps, masks = _two_regions(low_r2=0.1)
    # 10 more normals at 0.0 (below every region px): FPR steps halve, areas are
    #   to 0.3: 0.05 * 1/2 + 0.1 * 3/4 + (0.3 - 0.15) * 1 = 0.025 + 0.075 + 0.15 = 0.25
    # -> / 0.3 = 5/6.
    maps.append(np.zeros((2, 5)))
    masks.append(np.zeros((2, 5), dtype=bool))
    assert pro_score(maps, masks) == pytest.approx(5 / 6, abs=1e-12)


def _pro_loop(maps, masks, max_fpr: float) -> float:
    """PRO through every distinct threshold, one at a time, cut at max_fpr by interpolation."""
    regions = []
    for m, k in zip(maps, masks, strict=True):
        lab, n = ndimage.label(k, structure=np.ones((3, 3)))
        regions += [m[lab == r] for r in range(1, n + 1)]
    negs = np.concatenate([m[~k] for m, k in zip(maps, masks, strict=True)])
    fpr, pro = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fpr.append(np.mean(negs >= t))
        pro.append(np.mean([np.mean(r >= t) for r in regions]))
    fpr, pro = np.array(fpr + [1.0]), np.array(pro + [pro[-1]])
    i = int(np.searchsorted(fpr, max_fpr))  # first point at or past max_fpr
    cut = pro[i - 1] + (max_fpr - fpr[i - 1]) / (fpr[i] - fpr[i - 1]) * (pro[i] - pro[i - 1])
    xs, ys = np.append(fpr[:i], max_fpr), np.append(pro[:i], cut)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2 / max_fpr)


def test_pro_matches_brute_force_on_random_ties():
    rng = np.random.default_rng(4)
    for _ in range(40):
        maps = [rng.integers(0, int(rng.integers(2, 30)), (8, 9)).astype(float) for _ in "ab"]
        masks = [rng.random((8, 9)) < 0.3 for _ in "ab"]
        for max_fpr in (0.05, 0.3, 1.0):
            assert pro_score(maps, masks, max_fpr) == pytest.approx(
                _pro_loop(maps, masks, max_fpr), abs=1e-12
            )


def test_evaluate_matches_the_single_metrics():
    rng = np.random.default_rng(2)
    maps = rng.integers(0, 20, (4, 16, 16)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 3:7, 2:9] = masks[2, 10:12, 10:15] = masks[2, 0:2, 0:2] = True
    maps[masks] += 5
    scores, labels = maps.max(axis=(1, 2)), [0, 1, 1, 0]
    out = evaluate(maps, masks, scores, labels)
    assert out == {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_ap": pixel_ap(maps, masks),
        "pro": pro_score(maps, masks),
        "image_auroc": image_auroc(scores, labels),
    }
    assert 0.5 < out["pixel_auroc"] <= 1.0


def test_pixel_metrics_streams_maps_against_brute_force():
    # Maps of mixed sizes, dtypes and ties, produced on demand (one image is all normal): the
    # two passes give the brute-force values over all pixels pooled, and produce the maps
    # exactly twice.
    rng = np.random.default_rng(3)
    shapes = [(9, 7), (5, 12), (8, 8), (3, 4), (40, 30)]
    maps = [rng.integers(0, 9, s).astype(np.float32) for s in shapes]
    maps[1] = maps[1].astype(np.float64)
    maps[4] = rng.random(shapes[4]).astype(np.float32)  # many distinct scores, few ties
    masks = [rng.random(s) < 0.3 for s in shapes]
    masks[3][:] = False
    for m, k in zip(maps, masks, strict=True):
        m[k] += 2
    calls = []

    def pairs():
        calls.append(1)
        return ((m.copy(), k.astype(np.uint8) * 255) for m, k in zip(maps, masks, strict=True))

    got = pixel_metrics(pairs)
    assert len(calls) == 2
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([k.ravel() for k in masks])
    assert got["pixel_auroc"] == pytest.approx(_auroc_pairs(scores, labels), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(_ap_loop(scores, labels), abs=1e-12)
    assert got["pro"] == pytest.approx(_pro_loop(maps, masks, 0.3), abs=1e-12)


def test_streamed_regions_keep_their_own_weight():
    # The PRO hand case of test_pro_two_regions_hand_computed, streamed image by image: the
    # region ids of the second image must not merge with the first image's.
    maps, masks = _two_regions(low_r2=0.1)
    got = pixel_metrics(lambda: zip(maps, masks, strict=True))
    assert got["pro"] == pytest.approx(2 / 3, abs=1e-12)


def test_second_pass_must_see_the_same_maps():
    rng = np.random.default_rng(5)
    masks = [rng.random((6, 6)) < 0.3 for _ in range(3)]
    passes = []

    def drifting():  # the second pass nudges one normal pixel of the last map
        passes.append(1)
        for i, k in enumerate(masks):
            m = np.where(k, 1.0, 0.0)
            if len(passes) == 2 and i == 2:
                m[np.argmin(k)] = 0.5
            yield m, k

    with pytest.raises(RuntimeError, match=r"maps\[2\] changed"):
        pixel_metrics(drifting)
    shown = []

    def shrinking():  # the second pass leaves the last map out
        shown.append(1)
        return ((k.astype(float), k) for k in masks[: 4 - len(shown)])

    with pytest.raises(RuntimeError, match="fewer maps"):
        pixel_metrics(shrinking)
    with pytest.raises(ValueError, match="No maps"):
        pixel_metrics(lambda: iter(()))


# ---------------------------------------------------------------- errors


def test_single_class_raises():
    ones, zeros = np.ones((4, 4)), np.zeros((4, 4))
    for fn in (pixel_auroc, pixel_ap):
        with pytest.raises(ValueError, match="both normal and anomalous"):
            fn(np.random.default_rng(0).random((4, 4)), zeros)
        with pytest.raises(ValueError, match="both normal and anomalous"):
            fn(zeros, ones)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        image_auroc([0.2, 0.3], [1, 1])
    with pytest.raises(ValueError, match="all normal; AUROC, AP and PRO need both"):
        pro_score(ones, zeros)
    with pytest.raises(ValueError, match="all anomalous; AUROC, AP and PRO need both"):
        pro_score(ones, ones)


def test_bad_inputs_raise():
    m = np.zeros((4, 4))
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(m, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="maps but"):
        pixel_auroc([m, m], [m])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([np.nan, 1.0], [0, 1])
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(m, m, max_fpr=0.0)
    with pytest.raises(ValueError, match="labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
