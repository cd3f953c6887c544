"""Command line: ``python -m subspace eval | predict | bench``.

Examples:
    python -m subspace eval ../shared/data/mtd/magnetic_tile --shots 8 --seeds 0 1 2
    python -m subspace predict --normals examples/ballscrew/normal \\
        --query examples/ballscrew/query/01_200907090805_635000_270_crop_2.jpg --out out/
    python -m subspace bench ../shared/data/mtd/magnetic_tile --quick

Every detector setting is a flag generated from :class:`subspace.detector.Config`, so the
defaults shown by ``--help`` are the dataclass's own. Bad arguments and unreadable data end
with one message on stderr and exit code 2, as argparse does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from tqdm import tqdm

from .backbone import PRESETS, Backbone, load_backbone
from .data import ImageError, list_images, list_test, list_train, load_image, load_mask
from .detector import CHOICES as DETECTOR_CHOICES
from .detector import Config, Detector
from .metrics import PixelScores, image_auroc

PROG = "python -m subspace"
METHODS = DETECTOR_CHOICES["method"]
METRICS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")
SUBSET_SEED = 0  # --max-test subset: fixed, so every seed and method sees the same images
# Closed sets of string settings, checked at parse time rather than minutes into a run.
CHOICES = {"backbone": ("auto", *PRESETS), **DETECTOR_CHOICES}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class UsageError(ValueError):
    """A problem with the user's arguments or data; printed as one line, exit code 2."""


# ---------------------------------------------------------------- Config <-> flags
def _field_comments() -> dict[str, str]:
    """Each Config field's trailing ``# comment`` in detector.py, reused as its --help."""
    try:
        src = inspect.getsource(Config)
    except (OSError, TypeError):  # no source (frozen app): help without descriptions
        return {}
    return dict(re.findall(r"^\s+(\w+):[^=\n]+=[^#\n]+#\s*(.+)$", src, re.MULTILINE))


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per Config field (``lam`` -> ``--lam``, bools -> ``--affine/--no-affine``)."""
    group = parser.add_argument_group("detector settings (defaults from subspace.detector.Config)")
    comments = _field_comments()
    for f in fields(Config):
        if f.name in skip:
            continue
        kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
        text = comments.get(f.name, "").replace("%", "%%")
        text = f"{text} (default: {f.default})" if text else f"default: {f.default}"
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            action = argparse.BooleanOptionalAction
            group.add_argument(flag, dest=f.name, action=action, default=None, help=text)
        else:
            choices = CHOICES.get(f.name)
            metavar = None if choices else f.name.upper()
            group.add_argument(
                flag, dest=f.name, type=kind, choices=choices, metavar=metavar, help=text
            )


def config_from(args: argparse.Namespace, **overrides) -> Config:
    """The Config defaults, replaced by the flags the user gave and then by ``overrides``."""
    given = {f.name: getattr(args, f.name, None) for f in fields(Config)}
    values = {k: v for k, v in given.items() if v is not None} | overrides
    try:
        return Config(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"seeds are non-negative integers, got {text!r}")
    return int(text)


# ---------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _load_backbone(name: str, pretrained: bool = True) -> Backbone:
    try:
        return load_backbone(name, pretrained=pretrained)
    except RuntimeError as err:  # e.g. Hub weights requested while offline: says what to do
        raise UsageError(str(err)) from err


def _fit_bar(desc: str, quiet: bool) -> tuple[tqdm, Callable[[float, str], None]]:
    """A percentage bar on stderr fed by Detector.fit's progress(fraction, message) callback."""
    fmt = "{desc}: {percentage:3.0f}%|{bar:20}| {elapsed}{postfix}"
    bar = tqdm(total=100, desc=desc, file=sys.stderr, disable=quiet, leave=False, bar_format=fmt)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return bar, progress


# ---------------------------------------------------------------- eval
def draw(n: int, k: int, seed: int) -> list[int]:
    """Indices of the k reference images of one few-shot draw (without replacement)."""
    return [int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False)]


def subset_indices(n: int, max_test: int | None) -> list[int]:
    """Sorted indices of the evaluated test images: all, or a fixed random subset."""
    if max_test is None or max_test >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(SUBSET_SEED).choice(n, max_test, False))


def _pixel_count(paths: Sequence[Path]) -> int:
    """Total pixels of the images, from their headers: an upper bound of their maps' pixels
    (an image loads at most at its own size; one whose header cannot be read counts 0)."""
    total = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                total += im.width * im.height
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
    return total


def _score_tests(det: Detector, tests: list, skipped: dict, desc: str, quiet: bool) -> dict:
    """Predict every readable test image and score both scorers; metrics and timings.

    Each map goes into its scorer's ``PixelScores`` and is dropped at once, so memory holds
    one copy of the pixels per scorer, never the maps of the whole test set.
    """
    capacity = _pixel_count([s.path for s in tests])
    pixels = {m: PixelScores(capacity) for m in METHODS}
    scores: dict = {m: [] for m in METHODS}
    labels, times = [], []
    bar = tqdm(tests, desc=desc, unit="img", file=sys.stderr, disable=quiet, leave=False)
    for s in bar:
        try:
            image = load_image(s.path, name=f"test image {s.path.name!r}")
            mask = load_mask(s.mask_path, size=image.size)  # (H, W) bool
        except (ImageError, OSError, ValueError) as err:
            if str(s.path) not in skipped:  # warn once, not once per seed
                tqdm.write(f"warning: skipping {err}", file=sys.stderr)
            skipped[str(s.path)] = str(err)
            continue
        t0 = time.perf_counter()
        pred = det.predict(image)
        times.append(time.perf_counter() - t0)
        for m in METHODS:
            pixels[m].add(getattr(pred, m).heatmap, mask)
            scores[m].append(getattr(pred, m).score)
        labels.append(int(s.defect != "good"))
    if not labels:
        raise UsageError(f"none of the {len(tests)} test images could be read")
    metrics = {}
    for m in METHODS:  # one scorer's pixels are sorted and freed before the next
        metrics[m] = pixels.pop(m).metrics() | {"image_auroc": image_auroc(scores[m], labels)}
    return dict(metrics=metrics, n_test=len(labels), times=times)


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def run_eval(
    root: Path,
    shots: int,
    seeds: Sequence[int],
    config: Config,
    max_test: int | None = None,
    pretrained: bool = True,
    quiet: bool = False,
) -> dict:
    """Few-shot evaluation of both scorers on an MVTec-layout folder; returns the JSON dict."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory; pass an MVTec-layout folder")
    train, tests = list_train(root), list_test(root)
    if shots > len(train):
        raise UsageError(f"--shots {shots}: {root}/train/good holds only {len(train)} images")
    tests = [tests[i] for i in subset_indices(len(tests), max_test)]
    n_bad = sum(s.defect != "good" for s in tests)
    if n_bad in (0, len(tests)):  # AUROC needs both; say so before minutes of fitting
        what = "defective" if n_bad == 0 else "normal (test/good)"
        hint = " (raise --max-test)" if max_test else ""
        raise UsageError(f"the {len(tests)} test images hold no {what} image{hint}")
    t_start, load_start = time.perf_counter(), _load_avg()
    backbone = _load_backbone(config.backbone, pretrained)
    config = replace(config, backbone=backbone.name)
    skipped: dict[str, str] = {}  # unreadable test image -> why
    per_seed, times = [], []
    for seed in seeds:
        names = [train[i] for i in draw(len(train), shots, seed)]
        refs = [load_image(p, name=f"reference {p.name!r}") for p in names]
        bar, progress = _fit_bar(f"seed {seed}: fit", quiet)
        with bar:
            det = Detector(replace(config, seed=seed), backbone=backbone).fit(refs, progress)
        got = _score_tests(det, tests, skipped, f"seed {seed}: predict", quiet)
        times += got["times"]
        row = dict(seed=seed, train=[str(p.relative_to(root)) for p in names])
        row |= dict(fit_s=det.fit_seconds, bank_size=det.bank_size, bank_bytes=det.bank_bytes)
        row |= dict(n_full=det.n_full, ms_per_image=1000 * float(np.median(got["times"])))
        row |= got["metrics"]
        per_seed.append(row)
        if not quiet:
            tqdm.write(
                f"seed {seed}: fit {det.fit_seconds:.1f} s, bank {det.bank_size} rows, "
                f"{row['ms_per_image']:.0f} ms/image | pixel AUROC sgfr "
                f"{row['sgfr']['pixel_auroc']:.3f}, knn {row['knn']['pixel_auroc']:.3f}",
                file=sys.stderr,
            )
    summary = {}  # method -> mean metrics over seeds, their std
    for m in METHODS:
        values = {k: [r[m][k] for r in per_seed] for k in METRICS}
        summary[m] = {k: float(np.mean(v)) for k, v in values.items()}
        summary[m]["std"] = {k: float(np.std(v)) for k, v in values.items()}
    other = "knn" if config.method == "sgfr" else "sgfr"
    return dict(
        data=str(root),
        backbone=backbone.name,
        pretrained=pretrained,
        method=config.method,
        shots=shots,
        seeds=list(seeds),
        n_test=got["n_test"],
        n_skipped=len(skipped),
        max_test=max_test,
        **summary[config.method],
        baseline=dict(method=other, **summary[other]),
        ms_per_image=1000 * float(np.median(times)),
        fit_s=_mean(per_seed, "fit_s"),
        bank_size=round(_mean(per_seed, "bank_size")),
        bank_bytes=round(_mean(per_seed, "bank_bytes")),
        n_full=round(_mean(per_seed, "n_full")),
        feature_dim=int(det.bank.shape[1]),
        peak_rss_mb=peak_rss_mb(),
        load_avg=[load_start, _load_avg()],  # 1-min load at start / end: were the CPUs shared?
        wall_s=time.perf_counter() - t_start,
        config=asdict(config),
        per_seed=per_seed,
        skipped=skipped,
        test_images=[str(s.path.relative_to(root)) for s in tests if str(s.path) not in skipped],
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=dict(
            python=platform.python_version(), torch=torch.__version__, timm=timm.__version__
        ),
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
    )


def format_table(result: dict) -> str:
    """Both scorers as rows; '*' marks the one chosen by --method."""
    rows = {result["method"]: result, result["baseline"]["method"]: result["baseline"]}
    several = len(result["seeds"]) > 1
    head = ["method", "pixel AUROC", "pixel AP", "PRO", "image AUROC"]
    head += ["ms/image", "fit s", "bank rows", "bank MB"]
    lines = [head]
    for m in METHODS:
        r = rows[m]
        cells = [("* " if m == result["method"] else "  ") + m]
        for k in METRICS:
            cells.append(f"{r[k]:.3f}" + (f" ± {r['std'][k]:.3f}" if several else ""))
        cells += [f"{result['ms_per_image']:.0f}", f"{result['fit_s']:.1f}"]
        cells += [f"{result['bank_size']}", f"{result['bank_bytes'] / 2**20:.2f}"]
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    weights = "" if result["pretrained"] else " (RANDOM weights: timing only)"
    text.append(
        f"backbone {result['backbone']}{weights} | {result['shots']} shots | seeds "
        f"{' '.join(map(str, result['seeds']))} | {result['n_test']} test images "
        f"({result['n_skipped']} skipped) | peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    return "\n".join(text)


def cmd_eval(args: argparse.Namespace) -> int:
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds: repeated seed in {args.seeds}")
    if args.json and Path(args.json).is_dir():
        raise UsageError(f"--json {args.json}: is a directory; give a file name")
    config = config_from(args)
    result = run_eval(
        Path(args.data),
        args.shots,
        args.seeds,
        config,
        args.max_test,
        pretrained=not args.random_weights,
        quiet=args.quiet,
    )
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- predict
def gather_images(items: Sequence[str]) -> list[Path]:
    """Files and folders -> image paths (a folder contributes its image files, sorted)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += list_images(p)  # DatasetError (a ValueError) when it holds no images
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    config = config_from(args)
    paths = gather_images(args.normals)
    refs = [load_image(p, name=f"normal image {p.name!r}") for p in paths]
    query = load_image(args.query, name=f"query {Path(args.query).name!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backbone = _load_backbone(config.backbone)
    t_backbone = time.perf_counter() - t0
    bar, progress = _fit_bar(f"fit on {len(refs)} normal images", args.quiet)
    with bar:
        det = Detector(replace(config, backbone=backbone.name), backbone=backbone)
        det.fit(refs, progress)
    pred = det.predict(query)
    top, knn = pred.primary, pred.knn
    from . import viz  # the app's drawing: the same fixed calibrated colour scale

    np.save(out / "heatmap.npy", top.heatmap.astype(np.float32))  # (H, W) at the query's size
    Image.fromarray(viz.colorize(top.heatmap, top.vmin, top.vmax)).save(out / "heatmap.png")
    viz.overlay(query, top.heatmap, top.vmin, top.vmax).save(out / "overlay.png")
    area = viz.defect_area(top.heatmap, top.threshold)  # share of pixels above the threshold
    scores = dict(
        query=str(args.query),
        normals=[str(p) for p in paths],
        backbone=pred.backbone,
        method=pred.method,
        score=top.score,
        threshold=top.threshold,
        p_value=top.p_value,
        area_above_threshold=area,
        vmin=top.vmin,
        vmax=top.vmax,
        knn=dict(score=knn.score, threshold=knn.threshold, p_value=knn.p_value),
        sgfr=dict(score=pred.sgfr.score, threshold=pred.sgfr.threshold, p_value=pred.sgfr.p_value),
        size=list(query.size),
        bank_size=det.bank_size,
        timings=dict(backbone_s=t_backbone, fit_s=det.fit_seconds, predict_s=pred.seconds),
        config=asdict(det.config),
    )
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(
        f"{Path(args.query).name}: {pred.method} score {top.score:.3g} "
        f"(p = {top.p_value:.2f} among the references), {100 * area:.2f} % of pixels above "
        f"the threshold {top.threshold:.3g}; knn baseline score {knn.score:.3g}\n"
        f"backbone {pred.backbone}, {len(refs)} normals, bank {det.bank_size} rows, "
        f"fit {det.fit_seconds:.1f} s, predict {1000 * pred.seconds:.0f} ms\n"
        f"wrote {out}/heatmap.png, overlay.png, heatmap.npy, scores.json"
    )
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Few-shot anomaly localization by subspace-guided reconstruction."
    )
    sub = parser.add_subparsers(dest="command", metavar="{eval,predict,bench}")
    ev = sub.add_parser("eval", help="few-shot evaluation on an MVTec-layout folder")
    ev.add_argument("data", metavar="DATA_DIR", help="folder with train/good, test/, ground_truth/")
    ev.add_argument(
        "--shots", type=_positive, required=True, metavar="K", help="normal images per draw (k)"
    )
    ev.add_argument(
        "--seeds",
        type=_seed,
        metavar="SEED",
        nargs="+",
        default=[0],
        help="one draw of --shots images per seed; metrics are averaged (default: 0)",
    )
    ev.add_argument(
        "--max-test",
        type=_positive,
        metavar="N",
        default=None,
        help="evaluate a fixed random subset of this many test images (default: all)",
    )
    ev.add_argument("--json", metavar="FILE", help="write all results to this JSON file")
    ev.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained backbone (no download): for timing only",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_config_flags(ev, skip=("seed",))  # the sampling seed follows each draw's seed
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="score one image against a few normal ones")
    pr.add_argument(
        "--normals",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="normal reference images, or folders of them",
    )
    pr.add_argument("--query", required=True, metavar="IMAGE", help="image to inspect")
    pr.add_argument("--out", required=True, metavar="DIR", help="output folder")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_config_flags(pr)
    pr.set_defaults(func=cmd_predict)

    from . import bench  # imports this module: keep the import out of module scope

    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad arguments or data)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None) * 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # UsageError, ImageError, DatasetError, file errors
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
