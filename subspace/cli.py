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
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .backbone import PRESETS
from .data import load_image
from .dataset import list_images
from .detector import CHOICES as DETECTOR_CHOICES
from .detector import Config, Detector
from .evaluation import UsageError, fit_bar, format_table, open_backbone, run_eval

PROG = "python -m subspace"
# Closed sets of string settings, checked at parse time rather than minutes into a run.
CHOICES = {"backbone": ("auto", *PRESETS), **DETECTOR_CHOICES}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


# ---------------------------------------------------------------- Config <-> flags
def _field_comments() -> dict[str, str]:
    """Each Config field's comments in detector.py (its trailing ``# comment``, then the lines
    above it), reused as its --help."""
    try:
        src = inspect.getsource(Config)
    except (OSError, TypeError):  # no source (frozen app): help without descriptions
        return {}
    out, above = {}, []
    for line in src.splitlines():
        if m := re.match(r"^\s+#\s*(?:\.\.\.\s*)?(.+)$", line):
            above.append(m.group(1))
        elif m := re.match(r"^\s+(\w+):[^=\n]+=[^#\n]+(?:#\s*(.+))?$", line):
            out[m.group(1)] = "; ".join(filter(None, [m.group(2), " ".join(above)]))
            above = []
        else:
            above = []
    return {name: text for name, text in out.items() if text}


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


# ---------------------------------------------------------------- eval
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
    backbone = open_backbone(config.backbone)
    t_backbone = time.perf_counter() - t0
    bar, progress = fit_bar(f"fit on {len(refs)} normal images", args.quiet)
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
