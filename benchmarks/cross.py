"""SGFR against its nearest-neighbour baseline on every dataset at once.

    python benchmarks/cross.py                 # the defaults: writes benchmarks/cross_dataset.md
    python benchmarks/cross.py --set angle=0 --set active=0 --name "no angle, no count"
    python benchmarks/cross.py --data ../shared/data --shots 1 8 --seeds 0 --max-test 50

Every MVTec-layout folder under ``--data`` (``train/good``, ``test/<defect>``,
``ground_truth/<defect>``) is a dataset; none is named here. For each dataset, number of shots
k and seed: the k references of that seed's draw, a fixed seeded subset of at most
``--max-test`` test images (the same for every k, seed and variant), one fit, one prediction
per image, and both scorers' four metrics from those very predictions (as ``python -m subspace
eval`` computes them). Printed: one table per dataset and the SGFR - NN margins with the worst
over datasets. With the defaults and nothing set, the same tables go to ``--out``, written once,
when every run is in.

Backbone features are cached on disk per (backbone, size, pad, image) under
``artifacts/features/``, so a change to the reconstruction or the score re-runs the grid from
them; each run's result is cached under ``artifacts/cross/`` by the settings and the core's
code, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subspace import features as feats  # noqa: E402
from subspace.backbone import Backbone, load_backbone  # noqa: E402
from subspace.data import load_image, load_mask  # noqa: E402
from subspace.dataset import list_test, list_train  # noqa: E402
from subspace.detector import Config, Detector  # noqa: E402
from subspace.evaluation import Kept, draw, scorer_metrics, subset_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("pixel_auroc", "pro", "pixel_ap", "image_auroc")
HEADS = {
    "pixel_auroc": "pixel AUROC",
    "pro": "PRO",
    "pixel_ap": "pixel AP",
    "image_auroc": "image AUROC",
}
CORE = ("backbone", "presets", "data", "dataset", "features", "reconstruct", "sampling")
CORE += ("scoring", "detector", "metrics", "evaluation")
MUST = {"pixel_auroc": -0.005, "pro": -0.01}  # SGFR - NN at least this, every dataset and k


def discover(root: Path) -> list[Path]:
    """Every MVTec-layout folder under ``root`` (itself included), sorted."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if (d / "train" / "good").is_dir() and (d / "test").is_dir():
            found.append(d)
            dirnames.clear()  # a dataset's own folders hold no further dataset
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
    return sorted(found)


def code_hash() -> str:
    """Hash of the sources that decide a run's numbers."""
    files = [ROOT / "subspace" / f"{name}.py" for name in CORE]
    return hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]


class Features:
    """Backbone feature maps of image files, computed once and kept on disk."""

    def __init__(self, backbone: Backbone, config: Config, folder: Path) -> None:
        self.backbone, self.config = backbone, config
        tag = f"{backbone.name}-s{config.size}-p{config.pad}"
        self.folder = folder / tag
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """(d, h, w) features of the image at ``path`` and its size (W, H)."""
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        file = self.folder / f"{key}.safetensors"
        if file.is_file():
            d = load_file(file)
            return d["fmap"], (int(d["size"][0]), int(d["size"][1]))
        image = load_image(path, name=path.name)
        c = self.config
        fmap = feats.extract(self.backbone, [image], c.size, pad=c.pad)
        tmp = file.with_suffix(".partial")
        save_file({"fmap": fmap[0].contiguous(), "size": torch.tensor(image.size)}, str(tmp))
        os.replace(tmp, file)
        return fmap[0], image.size


def run_one(data: Path, k: int, seed: int, config: Config, features: Features, max_test: int):
    """Metrics of both scorers for one (dataset, k, seed); timings beside them."""
    train, tests = list_train(data), list_test(data)
    tests = [tests[i] for i in subset_indices(len(tests), max_test)]
    refs = [features(train[i]) for i in draw(len(train), k, seed)]
    det = Detector(dataclasses.replace(config, seed=seed), backbone=features.backbone)
    t0 = time.perf_counter()
    det.fit_features([f for f, _ in refs], [s for _, s in refs], lambda *a: None)
    fit_s = time.perf_counter() - t0
    kept, times = [], []
    for s in tests:
        fmap, size = features(s.path)
        t0 = time.perf_counter()
        pred = det.predict_features(fmap, size)
        times.append(time.perf_counter() - t0)
        kept.append(Kept.of(pred, load_mask(s.mask_path, size=size), s.defect))
    out = dict(fit_s=fit_s, predict_ms=1000 * float(np.median(times)), n_test=len(tests))
    return out | scorer_metrics(det, kept)


def run_grid(args, config: Config) -> dict:
    """{dataset: {k: [result per seed]}}, from the cache where it holds a run."""
    datasets = discover(Path(args.data))
    if not datasets:
        raise SystemExit(f"{args.data}: no MVTec-layout folder (train/good, test/) found")
    backbone = load_backbone(config.backbone)
    config = dataclasses.replace(config, backbone=backbone.name)
    features = Features(backbone, config, Path(args.features))
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    tag = hashlib.sha1(f"{settings}:{code_hash()}:{args.max_test}".encode()).hexdigest()[:12]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    runs = [(d, k, s) for d in datasets for k in args.shots for s in args.seeds]
    grid: dict = {}
    bar = tqdm(runs, desc=args.name, unit="run", file=sys.stderr, disable=args.quiet)
    for data, k, seed in bar:
        name = str(data.relative_to(args.data)) if data != Path(args.data) else data.name
        bar.set_postfix_str(f"{name} k={k} seed {seed}")
        file = cache / f"{name.replace(os.sep, '_')}-k{k}-s{seed}-{tag}.json"
        if file.is_file():
            result = json.loads(file.read_text())
        else:
            result = run_one(data, k, seed, config, features, args.max_test)
            tmp = file.with_suffix(".partial")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, file)
        grid.setdefault(name, {}).setdefault(k, []).append(result)
    return grid


def _mean(results: list[dict], method: str, metric: str) -> float:
    return float(np.mean([r[method][metric] for r in results]))


def render(grid: dict, name: str, config: Config, args) -> str:
    """Markdown: one table per dataset, then the margins and the worst over datasets."""
    changed = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(Config)
        if getattr(config, f.name) != f.default and f.name != "backbone"
    }
    lines = [
        f"### {name}",
        "",
        f"Settings: {json.dumps(changed) if changed else 'the defaults (Config)'}, backbone "
        f"{config.backbone}; seeds {' '.join(map(str, args.seeds))}; at most {args.max_test} "
        "test images per dataset (a fixed seeded subset). Mean of the seeds; SGFR / NN.",
        "",
    ]
    for data, by_k in grid.items():
        n = by_k[next(iter(by_k))][0]["n_test"]
        lines += [f"**{data}** ({n} test images)", ""]
        lines.append("| k | " + " | ".join(HEADS[m] for m in METRICS) + " | fit s | predict ms |")
        lines.append("|---" * (len(METRICS) + 3) + "|")
        for k, results in by_k.items():
            cells = [
                f"{_mean(results, 'sgfr', m):.3f} / {_mean(results, 'knn', m):.3f}" for m in METRICS
            ]
            fit = np.mean([r["fit_s"] for r in results])
            ms = np.mean([r["predict_ms"] for r in results])
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {fit:.1f} | {ms:.0f} |")
        lines.append("")
    lines += ["**SGFR - NN** (worst dataset in bold per column)", ""]
    ks = sorted({k for by_k in grid.values() for k in by_k})
    lines.append("| dataset | k | " + " | ".join(HEADS[m] for m in METRICS) + " |")
    lines.append("|---" * (len(METRICS) + 2) + "|")
    margins = {
        (d, k): {m: _mean(r, "sgfr", m) - _mean(r, "knn", m) for m in METRICS}
        for d, by_k in grid.items()
        for k, r in by_k.items()
    }
    for k in ks:
        rows = [(d, margins[d, k]) for d in grid if (d, k) in margins]
        worst = {m: min(v[m] for _, v in rows) for m in METRICS}
        for d, v in rows:
            cells = [(f"**{v[m]:+.3f}**" if v[m] == worst[m] else f"{v[m]:+.3f}") for m in METRICS]
            lines.append(f"| {d} | {k} | " + " | ".join(cells) + " |")
        mean = [f"{np.mean([v[m] for _, v in rows]):+.3f}" for m in METRICS]
        lines.append(f"| mean | {k} | " + " | ".join(mean) + " |")
    held = [
        f"{d} k={k} {HEADS[m]} {v[m]:+.3f}"
        for (d, k), v in margins.items()
        for m, floor in MUST.items()
        if v[m] < floor
    ]
    lines += [
        "",
        "Must-targets (SGFR - NN >= -0.005 pixel AUROC, >= -0.01 PRO, every dataset and k): "
        + ("all held." if not held else "missed at " + "; ".join(held) + "."),
        "",
    ]
    return "\n".join(lines)


def summary_row(grid: dict, name: str, seeds: list[int]) -> str:
    """One markdown row for docs/experiments.md: the worst dataset's SGFR - NN margin of
    pixel AUROC and of PRO at each k, and the mean over datasets and k of pixel AP and image
    AUROC margins."""
    ks = sorted({k for by_k in grid.values() for k in by_k})
    margin = {
        (d, k, m): _mean(r, "sgfr", m) - _mean(r, "knn", m)
        for d, by_k in grid.items()
        for k, r in by_k.items()
        for m in METRICS
    }

    def worst(m: str) -> str:
        return " / ".join(f"{min(margin[d, k, m] for d in grid):+.3f}" for k in ks)

    def mean(m: str) -> str:
        return f"{np.mean([margin[d, k, m] for d in grid for k in ks]):+.3f}"

    where = f"{len(grid)} datasets, seeds {' '.join(map(str, seeds))}"
    return (
        f"| {name} | {where} | {worst('pixel_auroc')} | {worst('pro')} "
        f"| {mean('pixel_ap')} | {mean('image_auroc')} |"
    )


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs -> Config overrides, each value typed as the field's default."""
    types = {f.name: type(f.default) for f in dataclasses.fields(Config)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with a Config field")
        kind = types[key]
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-test", type=int, default=200)
    p.add_argument("--backbone", default="lite0")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--name", default="defaults", help="the variant's name in the output")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cross_dataset.md"))
    p.add_argument("--features", default=str(ROOT / "artifacts" / "features"))
    p.add_argument("--cache", default=str(ROOT / "artifacts" / "cross"))
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"{args.data}: no such folder; skipping (the datasets are not here)")
        return 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = Config(backbone=args.backbone, **parse_set(args.set))
    grid = run_grid(args, config)
    text = render(grid, args.name, config, args)
    print(text)
    print("Row for docs/experiments.md (worst dataset per k = " + str(sorted(args.shots)) + "):")
    print(summary_row(grid, args.name, args.seeds))
    standard = (args.shots, args.seeds, args.max_test) == ([1, 2, 4, 8], [0, 1, 2], 200)
    if not args.set and standard:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.partial")
        head = (
            "# SGFR and its baseline on every dataset\n\n"
            "`python benchmarks/cross.py` (tables below; `--set FIELD=VALUE` for a variant).\n\n"
        )
        tmp.write_text(head + text)
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
