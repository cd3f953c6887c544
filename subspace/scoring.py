"""Patch scores -> smooth anomaly maps and image scores; leave-one-out calibration."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) -> (B, H, W) separable Gaussian blur with reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(4 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x.unsqueeze(1)  # (B, 1, H, W)
    pad = min(radius, y.shape[-1] - 1, y.shape[-2] - 1)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect") if pad > 0 else y
    crop = radius - pad  # kernel wider than the image: valid part shrinks, pad back by edge
    y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, crop))
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(crop, 0))
    return y.squeeze(1)


def to_map(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(h, w) patch scores -> (H, W) map for working size=(W, H): bilinear upsampling, blur."""
    up = F.interpolate(patch_scores[None, None], size=(size[1], size[0]), mode="bilinear")
    return gaussian_blur(up[0], sigma)[0]


def image_score(m: torch.Tensor, how: str = "top1") -> float:
    """(H, W) map -> image score: the map's maximum, or the mean of its top 1 %."""
    flat = m.flatten()
    if how == "max":
        return float(flat.amax())
    if how == "top1":
        return float(flat.topk(max(1, flat.numel() // 100)).values.mean())
    raise ValueError(f"unknown image score {how!r}; choose max or top1")


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) working-size map -> (H, W) float32 array for an image of ``size`` = (W, H)."""
    out = F.interpolate(m[None, None], size=(size[1], size[0]), mode="bilinear")
    return out[0, 0].numpy().astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    """What normal looks like, from leave-one-out on the references (all plain data).

    A normal image is drawn with the same fixed colour scale as an anomalous one: no
    per-image stretching, so a normal query looks calm.
    """

    threshold: float  # default mask threshold: the `quantile` of normal map values
    vmin: float  # colour-scale floor: median normal map value
    vmax: float  # colour-scale ceiling: threshold sits at the colour scale's midpoint
    quantile: float  # the quantile the threshold was taken at
    image_scores: list[float]  # leave-one-out image scores of the references
    dim_typical: list[float]  # (d,) mean |residual| per dimension on normal patches
    dim_high: list[float]  # (d,) 99th percentile |residual| per dimension on normal patches

    def p_value(self, score: float) -> float:
        """Share of references scoring at least ``score`` (with +1 smoothing), in (0, 1]."""
        s = np.asarray(self.image_scores)
        return float((1 + (s >= score).sum()) / (1 + len(s)))

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    maps: list[torch.Tensor], residuals: torch.Tensor, scores_how: str, quantile: float
) -> Calibration:
    """Calibrate from leave-one-out maps of the references.

    Args:
        maps: k maps (H_i, W_i), each reference scored against the others.
        residuals: (n, d) |residual| rows of those references' patches.
        scores_how: image-score rule, as :func:`image_score`. quantile: threshold quantile.
    """
    values = torch.cat([m.flatten() for m in maps])
    if values.numel() > 2_000_000:  # quantiles of a strided subsample are plenty exact
        values = values[:: values.numel() // 2_000_000 + 1]
    lo, thr = torch.quantile(values.double(), torch.tensor([0.5, quantile], dtype=torch.float64))
    lo, thr = float(lo), float(thr)
    thr = max(thr, lo + 1e-6)
    return Calibration(
        threshold=thr,
        vmin=lo,
        vmax=2 * thr - lo,
        quantile=quantile,
        image_scores=[image_score(m, scores_how) for m in maps],
        dim_typical=residuals.abs().mean(0).tolist(),
        dim_high=torch.quantile(residuals.abs()[:200_000].double(), 0.99, dim=0).tolist(),
    )
