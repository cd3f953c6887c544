"""Fit and predict timings of the default detector, in-process (run it on an idle machine).

    python benchmarks/speed.py ../shared/data/mtd/magnetic_tile [--backbone lite0] [--shots 8]
        [--stages 2 3 4] [--size 384]

Three fits per setting (median), then the median predict time over 20 test images, for the
full bank and for usage sampling at 25 % (the app's default) and 10 %. ``--backbone wrn50``
uses random weights (no download here): speed only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py and the CLI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tune import use_stages  # noqa: E402

from subspace.backbone import load_backbone  # noqa: E402
from subspace.detector import Config, Detector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--size", type=int, default=Config.size, help="pixel budget")
    ap.add_argument("--stages", type=int, nargs="+", help="backbone stages (default: preset's)")
    args = ap.parse_args()
    use_stages(args.backbone, args.stages)
    train = sorted((args.data / "train" / "good").iterdir())
    test = sorted(p for p in (args.data / "test").glob("*/*") if p.is_file())
    pick = np.random.default_rng(0).choice(len(train), args.shots, replace=False)
    refs = [Image.open(train[i]).convert("RGB") for i in pick]
    queries = [
        Image.open(test[i]).convert("RGB")
        for i in np.random.default_rng(1).choice(len(test), 20, replace=False)
    ]
    bb = load_backbone(args.backbone, pretrained=args.backbone == "lite0")
    stages = "+".join(f"s{r}" for r in bb.reductions)
    weights = "pretrained" if args.backbone == "lite0" else "RANDOM weights (speed only)"
    for ratio in (1.0, 0.25, 0.1):
        cfg = Config(backbone=args.backbone, ratio=ratio, size=args.size)
        fits = [Detector(cfg, bb).fit(refs).fit_seconds for _ in range(3)]
        det = Detector(cfg, bb).fit(refs)
        det.predict(queries[0])  # warm-up
        ms = statistics.median(det.predict(q).seconds for q in queries) * 1000
        print(
            f"{args.backbone} ({weights}) {stages} {args.size} px k={args.shots} ratio={ratio}: "
            f"fit median {statistics.median(fits):.2f} s, predict median {ms:.0f} ms "
            f"(20 images), bank {det.bank_size} rows",
            flush=True,
        )


if __name__ == "__main__":
    main()
