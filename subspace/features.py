"""Multi-stage backbone maps -> one aligned patch-feature map; patches <-> rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbone import Backbone


@dataclass(frozen=True)
class Stage:
    """A backbone stage's channel slice inside the concatenated feature vector."""

    name: str  # e.g. "stage 1 (stride 8)"
    start: int
    stop: int


def stages(backbone: Backbone) -> list[Stage]:
    """Channel slices of each stage in the output of :func:`aggregate`."""
    out, start = [], 0
    for i, (c, r) in enumerate(zip(backbone.channels, backbone.reductions, strict=True)):
        out.append(Stage(f"stage {i + 1} (stride {r})", start, start + c))
        start += c
    return out


def working_size(
    size: tuple[int, int], budget: int, multiple: int, keep_aspect: bool = True
) -> tuple[int, int]:
    """(W, H) of an image -> (w, h) with the same aspect ratio and about budget**2 pixels.

    Keeping the aspect ratio keeps small defects (and the product's geometry) undistorted;
    sides are multiples of ``multiple`` so every stage's grid divides evenly. Without it,
    every image becomes budget x budget.
    """
    if not keep_aspect:
        side = max(multiple, round(budget / multiple) * multiple)
        return side, side
    w, h = size
    s = budget / math.sqrt(w * h)
    return (
        max(multiple, round(w * s / multiple) * multiple),
        max(multiple, round(h * s / multiple) * multiple),
    )


def to_tensor(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """RGB PIL images -> (B, 3, h, w) floats in [0, 1], resized (antialiased) to size=(w, h)."""
    arrays = [np.asarray(im.convert("RGB").resize(size, Image.BILINEAR)) for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, h, w) uint8
    return x.float().div_(255.0)


def aggregate(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stage maps -> (B, d, h, w) on the grid of the first (finest) map.

    Each map is 3x3 average-pooled (local neighbourhood context, as PatchCore) and the
    deeper maps are bilinearly upsampled to the first map's grid before concatenation.
    """
    h, w = maps[0].shape[-2:]
    out = []
    for m in maps:  # (B, C_i, h_i, w_i)
        m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, dim=1)  # (B, d, h, w)


def border_pad(size: tuple[int, int], pad: int, multiple: int) -> int:
    """Pixels of mirrored border to add around an image of working ``size`` = (w, h).

    ``pad`` rounded down to a multiple of ``multiple`` (so every stage's grid stays aligned
    and crops back exactly), and kept below the shorter side (a mirror needs that much image).
    """
    fits = (min(size) - 1) // multiple * multiple
    return max(0, min(pad // multiple * multiple, fits))


@torch.inference_mode()
def extract(
    backbone: Backbone,
    images: Sequence[Image.Image],
    budget: int,
    batch: int = 8,
    keep_aspect: bool = True,
    pad: int = 0,
) -> list[torch.Tensor]:
    """PIL images -> one (d, h, w) float32 feature map each, at the working size of each image.

    Images of equal working size are batched together (the usual case), at most ``batch``.
    ``pad``: mirror this many pixels (see :func:`border_pad`) around each image before the
    backbone and crop the maps back to the image's own grid, so that patches at the image's
    edge see a continuation of the image instead of the network's zero padding.
    """
    sizes = [working_size(im.size, budget, backbone.multiple, keep_aspect) for im in images]
    out: list[torch.Tensor | None] = [None] * len(images)
    for size in dict.fromkeys(sizes):
        idx = [i for i, s in enumerate(sizes) if s == size]
        p = border_pad(size, pad, backbone.multiple)
        cut = p // backbone.reductions[0]  # cells of the finest grid
        for j in range(0, len(idx), batch):
            part = idx[j : j + batch]
            x = to_tensor([images[i] for i in part], size)
            if p:
                x = F.pad(x, (p, p, p, p), mode="reflect")
            f = aggregate(backbone(x)).float()
            if cut:  # after pooling and upsampling, which then see the mirrored context too
                f = f[..., cut:-cut, cut:-cut]
            f = f.contiguous()  # plain (d, h, w) maps whatever layout the backbone used
            for i, fi in zip(part, f, strict=True):
                out[i] = fi
    return out


def to_rows(f: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (B*h*w, d), row order image-major then row-major."""
    b, d, h, w = f.shape
    return f.permute(0, 2, 3, 1).reshape(b * h * w, d)


def grid_positions(grids: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(sum h*w, 3) int32 rows of (image, gy, gx) for images with the given (h, w) grids."""
    parts = []
    for i, (h, w) in enumerate(grids):
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        parts.append(torch.stack([torch.full_like(gy, i), gy, gx], dim=-1).reshape(-1, 3))
    return torch.cat(parts).to(torch.int32)


def edge_rings(grids: Sequence[tuple[int, int]], cap: int) -> torch.Tensor:
    """(sum h*w,) int64: each cell's distance in cells to its grid's nearest edge, capped.

    Ring 0 is the outermost cells, ring ``cap`` everything ``cap`` or more cells in. CNN
    features near an image's edge carry the padding's imprint; rings tell them apart.
    """
    parts = []
    for h, w in grids:
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ring = torch.minimum(torch.minimum(gy, gx), torch.minimum(h - 1 - gy, w - 1 - gx))
        parts.append(ring.clamp_max(cap).reshape(-1))
    return torch.cat(parts)
