"""The detector: config, fit on a few normal images, predict, save / load (no pickle)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import features as feats
from . import reconstruct, scoring
from .backbone import Backbone, load_backbone
from .sampling import UsageSampler, make_sampler

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: the cross-dataset score; files of version 1 are refused
Progress = Callable[[float, str], None]
# The closed sets of Config's string settings (the CLI offers the same choices).
CHOICES: dict[str, tuple[str, ...]] = dict(
    method=("sgfr", "knn"),
    sampling=("usage", "usage-greedy", "usage-top", "random", "coreset"),
)


@dataclass(frozen=True)
class Config:
    """Every setting of a detector. Defaults are chosen across datasets (docs/experiments.md)."""

    backbone: str = "auto"  # preset name; "auto": wrn50 when the Hub answers, else lite0
    size: int = 256  # pixel budget: images keep their aspect ratio at about size x size pixels
    pad: int = 16  # mirror this many pixels around each image for the backbone (0: zero padding)
    method: str = "sgfr"  # primary scorer: "sgfr" (reconstruction) or "knn" (nearest neighbour)
    k: int = 32  # support: each feature is coded over its K nearest atoms
    rings: int = 6  # support from atoms as many cells from the edge, counted up to rings (0: any)
    lam: float = 0.1  # regularisation, relative to the atoms' mean squared norm
    alpha: float = 0.5  # L1 share of the elastic net: 0 ridge, 1 lasso
    # patch score: the residual ||r|| times (||r|| / nearest-atom distance)^angle, capped at 1. At
    # -0.75 the score is d_nn * (||r|| / d_nn)^0.25 (||r|| where the code rebuilds worse than
    # the nearest atom): the distance to the nearest normal patch, discounted by how much of
    # that offset the normal subspace explains (0: the residual alone; -1: d_nn alone)
    angle: float = -0.75
    sampling: str = "usage"  # bank reduction: usage, usage-greedy, usage-top, random, coreset
    ratio: float = 0.25  # share of the bank kept by sampling (1: the full bank)
    # the bank's self-expression that usage ranks atoms by spreads its K atoms evenly by rank over
    # this many nearest, so that its codes span the local subspace, not near-copies of a patch
    usage_pool: int = 256
    sigma: float = 4.0  # map blur in pixels at 256 px
    quantile: float = 0.995  # default threshold: this quantile of normal (leave-one-out) maps
    seed: int = 0  # for random / coreset sampling

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        counts = (self.usage_pool, self.rings, self.pad)
        if min(counts) < 0 or self.k < 1 or self.size < 32:
            raise ValueError(
                f"need k >= 1, usage_pool >= 0, size >= 32, rings >= 0 and pad >= 0, got "
                f"k={self.k}, usage_pool={self.usage_pool}, size={self.size}, "
                f"rings={self.rings}, pad={self.pad}"
            )
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.angle < -1:
            raise ValueError(f"angle must be >= -1, got {self.angle}")


def fit_cap(rings: int, k: int, rings_of: Callable[[int], torch.Tensor]) -> int:
    """``rings`` lowered until every ring of ``rings_of(cap)`` holds at least ``k`` atoms."""
    while rings > 0 and torch.bincount(rings_of(rings), minlength=rings + 1).min() < k:
        rings -= 1
    return rings


@dataclass
class Scored:
    """One scorer's verdict on a query."""

    heatmap: np.ndarray  # (H, W) float32 at the query's own size
    score: float  # image score
    threshold: float  # calibrated default threshold (same units as heatmap)
    vmin: float  # fixed colour scale from calibration
    vmax: float
    p_value: float  # share of references at least as anomalous (leave-one-out), smoothed
    patch_scores: np.ndarray  # (h, w)


@dataclass
class Prediction:
    """Both scorers' maps plus what explains the SGFR map, patch by patch."""

    sgfr: Scored
    knn: Scored
    method: str  # the primary scorer
    residuals: np.ndarray  # (h*w, d) |y - y_hat| per feature dimension
    index: np.ndarray  # (h*w, K) bank rows that coded each patch
    coef: np.ndarray  # (h*w, K) their coefficients
    grid: tuple[int, int]  # (h, w) patch grid
    size: tuple[int, int]  # (W, H) of the query
    backbone: str
    seconds: float

    @property
    def primary(self) -> Scored:
        return self.sgfr if self.method == "sgfr" else self.knn

    def patch_at(self, x: float, y: float) -> tuple[int, int]:
        """Pixel (x, y) of the query -> (gy, gx) grid cell."""
        h, w = self.grid
        gx = int(np.clip(x * w / self.size[0], 0, w - 1))
        gy = int(np.clip(y * h / self.size[1], 0, h - 1))
        return gy, gx

    def top_patch(self) -> tuple[int, int]:
        """(gy, gx) of the most anomalous patch of the primary scorer."""
        gy, gx = np.unravel_index(int(np.argmax(self.primary.patch_scores)), self.grid)
        return int(gy), int(gx)


class Detector:
    """Few-shot anomaly detector by subspace-guided feature reconstruction (SGFR).

    Example:
        >>> det = Detector(Config(backbone="lite0")).fit(normal_images)
        >>> pred = det.predict(query)  # pred.sgfr.heatmap: (H, W)
    """

    def __init__(self, config: Config | None = None, backbone: Backbone | None = None) -> None:
        self.config = config or Config()
        self.backbone = backbone or load_backbone(self.config.backbone)
        self.stages = feats.stages(self.backbone)
        self.bank: torch.Tensor | None = None  # (N', d) the (sampled) normal bank
        self.positions: torch.Tensor | None = None  # (N', 3) int32 (image, gy, gx) of each atom
        self.ref_grids: list[tuple[int, int]] = []  # (h, w) patch grid of each reference
        self.n_full = 0  # bank rows before sampling
        self.ref_sizes: list[tuple[int, int]] = []  # (W, H) of each reference
        self.calibration: dict[str, scoring.Calibration] = {}
        self.fit_seconds = 0.0
        self._rings: tuple[int, torch.Tensor] | None = None  # (ring_cap, atom_rings(cap))

    # ---------------------------------------------------------------- features
    def features(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Images -> one (d, h_i, w_i) feature map each (the expensive, backbone part)."""
        c = self.config
        return feats.extract(self.backbone, images, c.size, pad=c.pad)

    def _rows(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Feature maps -> (sum h_i*w_i, d) patch rows and each map's (h, w) grid."""
        rows = torch.cat([feats.to_rows(f[None]) for f in maps])  # (sum h_i*w_i, d)
        return rows, [tuple(f.shape[1:]) for f in maps]

    def _code(self, rows: torch.Tensor, grids, exclude=None) -> reconstruct.Code:
        """Code ``rows`` (the patches of maps with (h, w) ``grids``) over their K nearest bank
        atoms, affine (codes sum to one)."""
        c = self.config
        cap, atom_ring = self.bank_rings()
        groups = (feats.edge_rings(grids, cap), atom_ring) if cap else None
        return reconstruct.code(
            rows,
            self.bank,
            c.k,
            c.lam,
            c.alpha,
            affine=True,
            exclude=exclude,
            groups=groups,  # border-aware: supports from the target's own edge ring
        )

    def atom_rings(self, cap: int) -> torch.Tensor:
        """(N',) edge ring of each bank atom's cell in its reference, capped at ``cap``."""
        pos = self.positions.long()
        widths = torch.tensor([w for _, w in self.ref_grids])
        starts = torch.tensor([0] + [h * w for h, w in self.ref_grids]).cumsum(0)
        cell = starts[pos[:, 0]] + pos[:, 1] * widths[pos[:, 0]] + pos[:, 2]  # row in full bank
        return feats.edge_rings(self.ref_grids, cap)[cell]

    @property
    def ring_cap(self) -> int:
        """Config.rings, lowered until every ring holds at least K atoms of the bank."""
        return self.bank_rings()[0]

    def bank_rings(self) -> tuple[int, torch.Tensor]:
        """(ring_cap, atom_rings(ring_cap)), computed once per bank."""
        if self._rings is None:
            cap = fit_cap(self.config.rings, self.config.k, self.atom_rings)
            self._rings = cap, self.atom_rings(cap)
        return self._rings

    def _patch_scores(self, coded: reconstruct.Code) -> dict[str, torch.Tensor]:
        """Both scorers' (M,) patch scores: SGFR's (the residual, see Config.angle) and the
        nearest distance (k-NN)."""
        sgfr = norm = coded.residual.norm(dim=1)  # (M,)
        if self.config.angle:
            # ||r|| / d_nn: the share of the offset from the nearest atom that the subspace
            # leaves unexplained, like the sine of the offset's angle to it (at most 1)
            unexplained = norm / coded.nn_dist.clamp_min(1e-12)
            sgfr = norm * unexplained.clamp_max(1.0).pow(self.config.angle)
        return {"sgfr": sgfr, "knn": coded.nn_dist}

    def _map(self, patch: torch.Tensor) -> torch.Tensor:
        """(h, w) patch scores -> (h*r, w*r) map at the working resolution (r: finest stride)."""
        r = self.backbone.reductions[0]
        size = (patch.shape[1] * r, patch.shape[0] * r)
        return scoring.to_map(patch, size, self.config.sigma * self.config.size / 256)

    def heatmap(self, patch_scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(h, w) patch scores -> the (H, W) float32 map of an image of ``size`` = (W, H).

        The very map :meth:`predict` returns from the same scores, so a caller may keep only
        the patch scores and draw the map again when it needs it.
        """
        return scoring.resize_map(self._map(torch.as_tensor(patch_scores)), size)

    # ---------------------------------------------------------------- fit
    @torch.inference_mode()
    def fit(self, images: Sequence[Image.Image], progress: Progress | None = None) -> Detector:
        """Build the bank from normal images, sample it, calibrate by leave-one-out.

        Args:
            images: k >= 1 defect-free RGB images of one product (any sizes).
            progress: optional callback(fraction, message).
        """
        if len(images) == 0:
            raise ValueError("need at least one normal reference image")
        t0 = time.perf_counter()
        say = progress or (lambda f, m: None)
        say(0.0, "extracting features")
        self.fit_features(self.features(images), [im.size for im in images], say)
        self.fit_seconds = time.perf_counter() - t0
        say(1.0, f"fitted in {self.fit_seconds:.1f} s")
        return self

    @torch.inference_mode()
    def fit_features(
        self, maps: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], say: Progress
    ) -> None:
        """:meth:`fit` from precomputed :meth:`features` of images of (W, H) ``sizes``."""
        c = self.config
        rows, self.ref_grids = self._rows(maps)  # (sum h_i*w_i, d)
        pos = feats.grid_positions(self.ref_grids)  # (sum h_i*w_i, 3)
        self.n_full, self.ref_sizes = rows.shape[0], list(sizes)
        keep = torch.arange(self.n_full)
        if c.ratio < 1.0:
            codes, strata, sampler = None, None, make_sampler(c.sampling, c.ratio, c.seed)
            if isinstance(sampler, UsageSampler):  # usage needs the bank's self-expression
                say(0.35, "learning subspaces (self-expression)")
                grids = self.ref_grids
                cap = fit_cap(c.rings, c.k, lambda r: feats.edge_rings(grids, r))
                ring = feats.edge_rings(grids, cap)
                codes = reconstruct.self_expression(  # in the edge rings predict will use
                    rows,
                    c.k,
                    c.lam,
                    c.alpha,
                    affine=True,
                    groups=(ring, ring) if cap else None,
                    pool=c.usage_pool,
                )
                strata = ring if cap else None  # each ring keeps its share of the budget
            say(0.55, f"sampling the bank ({c.sampling}, {c.ratio:.0%})")
            keep = sampler.run(rows, codes) if strata is None else sampler.run(rows, codes, strata)
        self.bank, self.positions = rows[keep].contiguous(), pos[keep].contiguous()
        self._rings = None
        say(0.7, "calibrating (leave-one-out)")
        self._calibrate(rows, pos, len(maps), keep)
        log.info("fit %d refs, bank %d/%d rows", len(maps), len(keep), self.n_full)

    def _calibrate(self, rows: torch.Tensor, pos: torch.Tensor, k: int, keep) -> None:
        """Score every reference against the others; with one reference, against far patches."""
        bank_pos = self.positions.long()
        radius = 2  # grid cells: with a single image, hide a patch's own neighbourhood

        def exclude(sl: slice) -> torch.Tensor:
            q = pos[sl].long()  # (m, 3)
            same = q[:, :1] == bank_pos[:, 0]  # (m, N')
            if k > 1:
                return same
            near = ((q[:, 1:2] - bank_pos[:, 1]).abs() <= radius) & (
                (q[:, 2:3] - bank_pos[:, 2]).abs() <= radius
            )
            return same & near

        coded = self._code(rows, self.ref_grids, exclude)
        counts = [h * w for h, w in self.ref_grids]
        for name, patch in self._patch_scores(coded).items():
            parts = patch.split(counts)
            maps = [self._map(p.view(g)) for p, g in zip(parts, self.ref_grids, strict=True)]
            c = self.config
            self.calibration[name] = scoring.calibrate(maps, coded.residual, "top1", c.quantile)

    # ---------------------------------------------------------------- predict
    @torch.inference_mode()
    def predict(self, image: Image.Image) -> Prediction:
        """Score one RGB query image (any size) against the fitted references."""
        if self.bank is None:
            raise RuntimeError("the detector is not fitted: call fit() with normal images first")
        t0 = time.perf_counter()
        pred = self.predict_features(self.features([image])[0], image.size)
        pred.seconds = time.perf_counter() - t0
        return pred

    @torch.inference_mode()
    def predict_features(self, fmap: torch.Tensor, size: tuple[int, int]) -> Prediction:
        """:meth:`predict` from a precomputed (d, h, w) feature map of an image of size (W, H)."""
        t0 = time.perf_counter()
        rows, (grid,) = self._rows([fmap])  # (h*w, d)
        coded = self._code(rows, [grid])
        out = {}
        for name, patch in self._patch_scores(coded).items():
            m = self._map(patch.view(grid))  # (h*r, w*r)
            score = scoring.image_score(m, "top1")
            cal = self.calibration[name]
            out[name] = Scored(
                heatmap=scoring.resize_map(m, size),
                score=score,
                threshold=cal.threshold,
                vmin=cal.vmin,
                vmax=cal.vmax,
                p_value=cal.p_value(score),
                patch_scores=patch.view(*grid).numpy(),
            )
        return Prediction(
            sgfr=out["sgfr"],
            knn=out["knn"],
            method=self.config.method,
            residuals=coded.residual.abs().numpy(),
            index=coded.index.numpy(),
            coef=coded.coef.numpy(),
            grid=grid,
            size=size,
            backbone=self.backbone.name,
            seconds=time.perf_counter() - t0,
        )

    # ---------------------------------------------------------------- explain
    def sources(self, pred: Prediction, gy: int, gx: int, top: int = 8) -> list[dict]:
        """Reference patches that rebuilt patch (gy, gx): image, grid cell, pixel box, coef."""
        row = gy * pred.grid[1] + gx
        order = np.argsort(-np.abs(pred.coef[row]))[:top]
        out = []
        for j in order:
            coef = float(pred.coef[row, j])
            if coef == 0.0:
                continue
            img, py, px = (int(v) for v in self.positions[pred.index[row, j]])
            out.append(dict(image=img, gy=py, gx=px, coef=coef, box=self.patch_box(img, py, px)))
        return out

    def patch_box(self, image: int, gy: int, gx: int) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) in reference ``image`` of the 3x3 cells around (gy, gx)."""
        (w_px, h_px), (h, w) = self.ref_sizes[image], self.ref_grids[image]
        cw, ch = w_px / w, h_px / h
        x0, y0 = max(0, int((gx - 1) * cw)), max(0, int((gy - 1) * ch))
        return x0, y0, min(w_px, int((gx + 2) * cw)), min(h_px, int((gy + 2) * ch))

    # ---------------------------------------------------------------- sizes
    @property
    def bank_size(self) -> int:
        return 0 if self.bank is None else int(self.bank.shape[0])

    @property
    def bank_bytes(self) -> int:
        if self.bank is None:
            return 0
        return self.bank.numel() * self.bank.element_size() + self.positions.numel() * 4

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``bank.safetensors`` into directory ``path``."""
        from safetensors.torch import save_file

        if self.bank is None:
            raise RuntimeError("nothing to save: the detector is not fitted")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(
            format=FORMAT_VERSION,
            config=asdict(self.config) | {"backbone": self.backbone.name},
            ref_grids=[list(g) for g in self.ref_grids],
            n_full=self.n_full,
            ref_sizes=[list(s) for s in self.ref_sizes],
            calibration={k: v.to_dict() for k, v in self.calibration.items()},
            fit_seconds=self.fit_seconds,
        )
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        tensors = {"bank": self.bank, "positions": self.positions}
        save_file(tensors, path / "bank.safetensors")
        return path

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None) -> Detector:
        """Inverse of :meth:`save`; only JSON and safetensors are read (never pickle)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: detector format {meta.get('format')!r}, this version reads "
                f"{FORMAT_VERSION}; fit the detector again on its references"
            )
        tensors = load_file(path / "bank.safetensors")
        known = {f.name for f in fields(Config)}
        det = cls(Config(**{k: v for k, v in meta["config"].items() if k in known}), backbone)
        det.bank, det.positions = tensors["bank"], tensors["positions"]
        det.ref_grids = [tuple(g) for g in meta["ref_grids"]]
        det.n_full = meta["n_full"]
        det.ref_sizes = [tuple(s) for s in meta["ref_sizes"]]
        det.calibration = {k: scoring.Calibration(**v) for k, v in meta["calibration"].items()}
        det.fit_seconds = meta["fit_seconds"]
        return det
