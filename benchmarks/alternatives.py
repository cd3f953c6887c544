"""Other readings of "subspace-guided" scoring, against the default SGFR and NN.

    python benchmarks/alternatives.py ../shared/data/mtd/magnetic_tile --seeds 0 1 2

Same features, references and test images as ``tune.py``; each row scores the test patches
another way and draws maps exactly as the detector does (``Detector.heatmap``). Image scores
are taken from the full-size maps, so every row is scored alike (image AUROC may differ from
``tune.py``'s in the third decimal):

- ``subspaces G/r/M``: a union of G affine subspaces of dimension r (k-means on the bank, then
  PCA per cluster); a patch scores its distance to the nearest of the subspaces of its M
  nearest cluster centres. Low-dimensional subspaces generalise between normal patches as
  codes do, with a fixed dictionary instead of a per-query support.
- ``top share s``: per-dimension residuals divided by their typical size on the references
  (leave-one-out), and the mean of the largest share s of them: the "poorly reconstructed
  dimensions" as the score itself. The NN column scores the difference to the nearest atom
  the same way.
- ``at most P per reference``: the default code, but of a patch's K support atoms at most P
  may come from any one reference (the K nearest among each reference's P nearest, within the
  patch's edge ring as the default): supports spread over the references' variation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune import data_args, load  # noqa: E402

from subspace import features as feats  # noqa: E402
from subspace import reconstruct  # noqa: E402
from subspace.backbone import load_backbone  # noqa: E402
from subspace.data import load_image, load_mask  # noqa: E402
from subspace.detector import Config, Detector, Prediction  # noqa: E402
from subspace.metrics import evaluate  # noqa: E402
from subspace.scoring import image_score  # noqa: E402


def kmeans(x: torch.Tensor, groups: int, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """(N,) cluster label of each row of ``x`` (Lloyd's algorithm from a seeded draw)."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:groups]].clone()
    for _ in range(iters):
        label = torch.cdist(x, centres).argmin(1)
        for j in range(len(centres)):
            if (label == j).any():
                centres[j] = x[label == j].mean(0)
    return torch.cdist(x, centres).argmin(1)


def subspaces(x: torch.Tensor, label: torch.Tensor, rank: int) -> tuple[torch.Tensor, ...]:
    """Per cluster: mean (G, d) and an orthonormal basis (G, d, rank) of its top directions."""
    means, bases = [], []
    for j in label.unique():
        z = x[label == j]
        mean = z.mean(0)
        basis = torch.zeros(x.shape[1], rank)
        top = torch.linalg.svd(z - mean, full_matrices=False).Vh[:rank].T  # (d, <= rank)
        basis[:, : top.shape[1]] = top
        means.append(mean)
        bases.append(basis)
    return torch.stack(means), torch.stack(bases)


def subspace_distance(y: torch.Tensor, means, bases, nearest: int) -> torch.Tensor:
    """(M,) distance of each row of ``y`` to the closest affine subspace among the subspaces
    of its ``nearest`` closest cluster means."""
    _, idx = torch.cdist(y, means).topk(min(nearest, len(means)), largest=False)
    best = torch.full((len(y),), float("inf"))
    for t in range(idx.shape[1]):
        diff = y - means[idx[:, t]]  # (M, d)
        inside = torch.einsum("md,mdr->mr", diff, bases[idx[:, t]])  # coordinates in the basis
        dist = (diff.pow(2).sum(1) - inside.pow(2).sum(1)).clamp_min(0).sqrt()
        best = torch.minimum(best, dist)
    return best


def top_share(diff: torch.Tensor, typical: torch.Tensor, share: float) -> torch.Tensor:
    """(M,) mean of the largest ``share`` of |diff| / typical over the dimensions."""
    m = max(1, round(share * diff.shape[1]))
    return (diff.abs() / typical).topk(m, dim=1).values.mean(1)


def capped_support(d2: torch.Tensor, source: torch.Tensor, k: int, per: int) -> torch.Tensor:
    """(M, k) indices of the k smallest of each row of ``d2`` (M, N) with at most ``per`` of
    them from any one ``source`` (N,) label, nearest first."""
    cand = []
    for cols in reconstruct.label_rows(source).values():
        cand.append(cols[d2[:, cols].topk(min(per, len(cols)), dim=1, largest=False).indices])
    cand = torch.cat(cand, 1)  # (M, sum of per-label picks)
    order = d2.gather(1, cand).topk(k, dim=1, largest=False).indices
    return cand.gather(1, order)


def capped_code_score(det: Detector, y: torch.Tensor, grid: tuple[int, int], per: int):
    """(M,) residual norms of the default code over supports capped at ``per`` per reference."""
    c, bank = det.config, det.bank
    d2 = torch.cdist(y, bank).pow(2)
    cap = det.ring_cap
    if cap:  # border-aware, as the default: atoms of the patch's own edge ring only
        ring = feats.edge_rings([grid], cap)
        d2.masked_fill_(ring[:, None] != det.atom_rings(cap)[None, :], float("inf"))
    idx = capped_support(d2, det.positions[:, 0].long(), c.k, per)
    atoms = bank[idx]  # (M, K, d)
    coef = reconstruct.solve(y, atoms, c.lam, c.alpha, affine=True)
    return (y - (coef.unsqueeze(1) @ atoms).squeeze(1)).norm(dim=1)


# (M, d) patch features and their prediction -> (M,) patch scores
Scorer = Callable[[torch.Tensor, Prediction], torch.Tensor]


def scorers(det: Detector, args: argparse.Namespace) -> dict[str, Scorer]:
    """Every scoring of a fitted detector's test patches that this benchmark compares."""
    typical = torch.tensor(det.calibration["sgfr"].dim_typical)
    typical = typical.clamp_min(0.05 * float(typical.mean()))

    def union(means, bases, nearest) -> Scorer:
        return lambda y, p: subspace_distance(y, means, bases, nearest)

    def top(share: float, to_nearest: bool) -> Scorer:
        def fn(y, p):
            if not to_nearest:
                return top_share(torch.from_numpy(p.residuals), typical, share)
            # the nearest atom of the whole bank: with rings, the support holds its ring's only
            nearest = det.bank[torch.cdist(y, det.bank).argmin(1)]
            diff = y - nearest
            return top_share(diff, typical, share)

        return fn

    out: dict[str, Scorer] = {
        "default SGFR": lambda y, p: torch.from_numpy(p.sgfr.patch_scores).flatten(),
        "NN": lambda y, p: torch.from_numpy(p.knn.patch_scores).flatten(),
    }
    for spec in args.subspaces:
        groups, rank, nearest = (int(v) for v in spec.split("/"))
        out[f"subspaces {spec}"] = union(
            *subspaces(det.bank, kmeans(det.bank, groups), rank), nearest
        )
    for s in args.shares:
        out[f"top share {s} SGFR"] = top(s, to_nearest=False)
        out[f"top share {s} NN"] = top(s, to_nearest=True)
    for per in args.per_ref:
        out[f"SGFR, at most {per} per reference"] = lambda y, p, per=per: capped_code_score(
            det, y, p.grid, per
        )
    return out


def score_seed(det: Detector, args: argparse.Namespace, seed: int) -> dict[str, dict]:
    """Fit on one seed's references; metrics of every scoring on the test images."""
    refs, test = load(args.data, args.shots, seed, args.max_test)
    ref_imgs = [load_image(p) for p in refs]
    det.fit_features(det.features(ref_imgs), [im.size for im in ref_imgs], lambda f, m: None)
    imgs = [load_image(t.path) for t in test]
    masks = [load_mask(t.mask_path, im.size) for t, im in zip(test, imgs, strict=True)]
    labels = [int(t.defect != "good") for t in test]
    fmaps = det.features(imgs)
    rows = [feats.to_rows(f[None]) for f in fmaps]
    preds = [det.predict_features(f, im.size) for f, im in zip(fmaps, imgs, strict=True)]
    out = {}
    for name, fn in scorers(det, args).items():
        patches = [fn(y, p).view(p.grid).numpy() for y, p in zip(rows, preds, strict=True)]
        maps = [det.heatmap(ps, p.size) for ps, p in zip(patches, preds, strict=True)]
        scores = [image_score(torch.from_numpy(m)) for m in maps]
        out[name] = evaluate(maps, masks, scores, labels)
    return out


def main() -> None:
    ap = data_args(__doc__.splitlines()[0])
    ap.add_argument("--subspaces", nargs="*", default=["64/8/4", "256/4/4"], help="G/r/M")
    ap.add_argument("--shares", type=float, nargs="*", default=[1.0, 0.25, 0.05])
    ap.add_argument("--per-ref", type=int, nargs="*", default=[5], help="support atoms cap")
    args = ap.parse_args()
    settings = dict(rings=args.rings, pad=args.pad, angle=args.angle)
    det = Detector(Config(backbone="lite0", ratio=args.ratio, **settings), load_backbone("lite0"))
    per_seed = [score_seed(det, args, seed) for seed in args.seeds]
    print("| scoring | pixel AUROC | PRO | pixel AP | image AUROC |")
    print("|---|---|---|---|---|")
    for name in per_seed[0]:
        mean = {k: np.mean([r[name][k] for r in per_seed]) for k in per_seed[0][name]}
        print(
            f"| {name} | {mean['pixel_auroc']:.3f} | {mean['pro']:.3f} | "
            f"{mean['pixel_ap']:.3f} | {mean['image_auroc']:.3f} |"
        )


if __name__ == "__main__":
    main()
