"""Sweep SGFR settings on cached backbone features: the evidence behind Config's defaults.

    python benchmarks/tune.py ../shared/data/mtd/magnetic_tile --shots 8 --seeds 0 --max-test 200
    python benchmarks/tune.py ../shared/data/bsdata-examples --shots 6 --stages 2 3 4 --only ...
    python benchmarks/tune.py ../shared/data/mtd/magnetic_tile --augment hflip vflip --only ...

Features of the references and of the test images are extracted once per input size; each
variant then refits and rescores from them, so a sweep of dozens of variants takes minutes.
Prints one markdown row per variant (SGFR and the nearest-neighbour baseline on the same bank).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subspace.backbone import load_backbone  # noqa: E402
from subspace.data import load_image, load_mask  # noqa: E402
from subspace.dataset import Sample, list_test, list_train  # noqa: E402
from subspace.detector import Config, Detector  # noqa: E402
from subspace.evaluation import draw, subset_indices  # noqa: E402
from subspace.examples import read_set  # noqa: E402
from subspace.metrics import evaluate  # noqa: E402
from subspace.presets import PRESETS  # noqa: E402

VARIANTS: dict[str, dict] = {
    "default (elastic net K=32, aspect kept)": dict(k=32),
    "elastic net K=16 lam=.1 a=.5 affine": dict(k=16),
    "ridge K=16 affine": dict(k=16, alpha=0.0),
    "ridge K=32 affine": dict(alpha=0.0, k=32),
    "elastic net K=8 affine": dict(k=8),
    "elastic net K=16 lam=.01": dict(k=16, lam=0.01),
    "elastic net K=16 lam=.3": dict(k=16, lam=0.3),
    "elastic net K=16 a=.9": dict(k=16, alpha=0.9),
    "lasso K=16 lam=.1 affine": dict(k=16, alpha=1.0),
    "lasso K=16 lam=.03 affine": dict(k=16, alpha=1.0, lam=0.03),
    "lasso K=32 lam=.03 affine": dict(alpha=1.0, lam=0.03, k=32),
    "lasso K=64 lam=.03 affine": dict(alpha=1.0, lam=0.03, k=64),
    "lasso K=32 lam=.1 affine": dict(alpha=1.0, lam=0.1, k=32),
    "lasso K=64 lam=.1 affine": dict(alpha=1.0, lam=0.1, k=64),
    "ridge K=64 lam=1 affine": dict(alpha=0.0, k=64, lam=1.0),
    "ridge K=64 lam=.3 affine": dict(alpha=0.0, k=64, lam=0.3),
    "elastic net K=16 sigma=2": dict(k=16, sigma=2.0),
    "elastic net K=16 sigma=8": dict(k=16, sigma=8.0),
    "border-aware support off, rings=0 (K=32)": dict(k=32, rings=0),
    "border-aware support rings=2 (K=32)": dict(k=32, rings=2),
    "border-aware support rings=4 (K=32)": dict(k=32, rings=4),
    "border-aware support rings=6 (K=32)": dict(k=32, rings=6),
    "border-aware support rings=8 (K=32)": dict(k=32, rings=8),
    "usage sampling 25% (K=32)": dict(k=32, sampling="usage", ratio=0.25),
    "usage sampling 10% (K=32)": dict(k=32, sampling="usage", ratio=0.1),
    "usage sampling 5% (K=32)": dict(k=32, sampling="usage", ratio=0.05),
    "usage sampling without coverage 25% (K=32)": dict(k=32, sampling="usage-greedy", ratio=0.25),
    "usage sampling without coverage 10% (K=32)": dict(k=32, sampling="usage-greedy", ratio=0.1),
    "usage sampling without coverage 5% (K=32)": dict(k=32, sampling="usage-greedy", ratio=0.05),
    "random sampling 25% (K=32)": dict(k=32, sampling="random", ratio=0.25),
    "random sampling 10% (K=32)": dict(k=32, sampling="random", ratio=0.1),
    "random sampling 5% (K=32)": dict(k=32, sampling="random", ratio=0.05),
    "coreset sampling 25% (K=32)": dict(k=32, sampling="coreset", ratio=0.25),
    "coreset sampling 10% (K=32)": dict(k=32, sampling="coreset", ratio=0.1),
    "coreset sampling 5% (K=32)": dict(k=32, sampling="coreset", ratio=0.05),
    "angle score 0, the residual norm (K=32)": dict(k=32, angle=0.0),
    "angle score 0.25 (K=32)": dict(k=32, angle=0.25),
    "angle score 0.5 (K=32)": dict(k=32, angle=0.5),
    "angle score 1 (K=32)": dict(k=32, angle=1.0),
    "angle score 0 usage sampling 10% (K=32)": dict(k=32, angle=0.0, sampling="usage", ratio=0.1),
    "angle score 0.5 usage sampling 10% (K=32)": dict(k=32, angle=0.5, sampling="usage", ratio=0.1),
    "angle score 1 usage sampling 10% (K=32)": dict(k=32, angle=1.0, sampling="usage", ratio=0.1),
    "angle score 0.5 random sampling 10% (K=32)": dict(
        k=32, angle=0.5, sampling="random", ratio=0.1
    ),
    "angle score 1 random sampling 10% (K=32)": dict(k=32, angle=1.0, sampling="random", ratio=0.1),
    "usage sampling 25%, self-expression over the 512 nearest (K=32)": dict(
        k=32, sampling="usage", ratio=0.25, usage_pool=512
    ),
    "usage sampling 10%, self-expression over the 512 nearest (K=32)": dict(
        k=32, sampling="usage", ratio=0.1, usage_pool=512
    ),
}


# Bank augmentation: each reference also enters the bank transformed (tune.py --augment).
AUGMENTS = {
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT,
    "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rot180": Image.Transpose.ROTATE_180,
}


def augmented(images: list[Image.Image], augment: list[str]) -> list[Image.Image]:
    """``images``, then each transform in ``augment`` applied to every one of them."""
    return images + [im.transpose(AUGMENTS[a]) for a in augment for im in images]


def load(root: Path, shots: int, seed: int, max_test: int) -> tuple[list[Path], list[Sample]]:
    """References and test samples: an MVTec layout, or ``normal/`` + ``query/`` (BSData).

    The same draws as ``python -m subspace eval``: references by ``draw``, test images by
    ``subset_indices``.
    """
    flat = read_set(root)  # BSData examples: normal/, query/, ground_truth/<stem>_mask.png
    train = flat.normal if flat else list_train(root)
    refs = [train[i] for i in draw(len(train), min(shots, len(train)), seed)]
    if flat:
        m = flat.masks
        test = [Sample(q, m.get(q.stem), "defect" if q.stem in m else "good") for q in flat.query]
    else:
        test = list_test(root)
    return refs, [test[i] for i in subset_indices(len(test), max_test or None)]  # 0: all


def use_stages(backbone: str, stages: list[int] | None) -> None:
    """Make preset ``backbone`` return other feature stages (a sweep over layers)."""
    if stages:
        preset = PRESETS[backbone]
        PRESETS[backbone] = dataclasses.replace(preset, out_indices=tuple(stages))


def run(args: argparse.Namespace, bb, base: Config, names: list[str]) -> None:
    """Extract features once for ``base``, then refit and score every variant in ``names``."""
    det = Detector(base, bb)
    stages = "+".join(f"s{r}" for r in bb.reductions)
    augment = ", bank + " + " + ".join(args.augment) if args.augment else ""
    cache = {}
    for seed in args.seeds:
        refs, test = load(args.data, args.shots, seed, args.max_test)
        ref_imgs = augmented([load_image(p) for p in refs], args.augment)
        test_imgs = [load_image(t.path) for t in test]
        cache[seed] = (
            det.features(ref_imgs),
            [im.size for im in ref_imgs],
            det.features(test_imgs),
            [im.size for im in test_imgs],
            [load_mask(t.mask_path, im.size) for t, im in zip(test, test_imgs, strict=True)],
            [int(t.defect != "good") for t in test],  # as eval labels them
        )
    for name in names:
        cfg = dataclasses.replace(base, **VARIANTS[name])
        t0 = time.perf_counter()
        res = {"sgfr": [], "knn": []}
        for seed, (rmaps, rsizes, tmaps, tsizes, masks, labels) in cache.items():
            d = Detector(dataclasses.replace(cfg, seed=seed), bb)  # as eval: random draws too
            d.fit_features(rmaps, rsizes, lambda f, m: None)
            preds = [d.predict_features(f, s) for f, s in zip(tmaps, tsizes, strict=True)]
            for m in res:
                sc = [getattr(p, m) for p in preds]
                res[m].append(
                    evaluate([s.heatmap for s in sc], masks, [s.score for s in sc], labels)
                )
        mean = {m: {k: np.mean([r[k] for r in v]) for k in v[0]} for m, v in res.items()}
        s, n = mean["sgfr"], mean["knn"]
        print(
            f"| {base.size} | {stages} | {name}{augment} | "
            f"{s['pixel_auroc']:.3f} | {s['pro']:.3f} | "
            f"{s['pixel_ap']:.3f} | {s['image_auroc']:.3f} | {n['pixel_auroc']:.3f} | "
            f"{n['pro']:.3f} | {n['pixel_ap']:.3f} | {n['image_auroc']:.3f} |"
            f"  <!-- {time.perf_counter() - t0:.0f} s -->",
            flush=True,
        )


def data_args(description: str) -> argparse.ArgumentParser:
    """The arguments every sweep shares: data folder, references, seeds, test subset, supports."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("data", type=Path)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-test", type=int, default=200, help="test images (0: all)")
    ap.add_argument(
        "--rings",
        type=int,
        default=Config.rings,
        help="border-aware support of every variant that does not set its own (0: off)",
    )
    ap.add_argument(
        "--pad",
        type=int,
        default=Config.pad,
        help="pixels of mirrored border around each image for the backbone (0: zero padding)",
    )
    ap.add_argument(
        "--ratio",
        type=float,
        default=1.0,
        help="share of the bank kept (by usage sampling) for every variant that does not set its "
        "own (default: 1, the full bank, as in the earlier experiments of docs/experiments.md; "
        "Config keeps 0.25)",
    )
    ap.add_argument(
        "--angle",
        type=float,
        default=Config.angle,
        help="angle score of every variant that does not set its own (0: the residual norm)",
    )
    return ap


def main() -> None:
    ap = data_args(__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--stages", type=int, nargs="+", help="backbone stages (default: preset's)")
    ap.add_argument(
        "--augment",
        nargs="*",
        default=[],
        choices=sorted(AUGMENTS),
        help="also put these transforms of each reference into the bank",
    )
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args()
    use_stages(args.backbone, args.stages)
    bb = load_backbone(args.backbone)
    print(
        "| size | stages | variant | SGFR pixel AUROC | PRO | pixel AP | image AUROC "
        "| NN pixel AUROC | NN PRO | NN pixel AP | NN image AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:  # features depend on it: one extraction per size
        names = [n for n in VARIANTS if not args.only or n in args.only]
        if names:
            base = Config(
                backbone=args.backbone,
                size=size,
                rings=args.rings,
                pad=args.pad,
                angle=args.angle,
                ratio=args.ratio,
            )
            run(args, bb, base, names)


if __name__ == "__main__":
    main()
