"""Few-shot evaluation of both scorers on an MVTec-layout folder: ``python -m subspace eval``.

``run_eval`` fits a Detector on each seed's draw of normal images, predicts every test image and
scores both scorers (SGFR and the nearest-neighbour baseline) with the exact metrics of
:mod:`subspace.metrics`; it returns the JSON result the CLI prints and writes.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch
from tqdm import tqdm

from .backbone import Backbone, load_backbone
from .data import ImageError, load_image, load_mask
from .dataset import list_test, list_train
from .detector import CHOICES as DETECTOR_CHOICES
from .detector import Config, Detector
from .metrics import image_auroc, pixel_metrics

METHODS = DETECTOR_CHOICES["method"]
METRICS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc")
SUBSET_SEED = 0  # --max-test subset: fixed, so every seed and method sees the same images


class UsageError(ValueError):
    """A problem with the user's arguments or data; printed as one line, exit code 2."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def open_backbone(name: str, pretrained: bool = True) -> Backbone:
    try:
        return load_backbone(name, pretrained=pretrained)
    except RuntimeError as err:  # e.g. Hub weights requested while offline: says what to do
        raise UsageError(str(err)) from err


def fit_bar(desc: str, quiet: bool) -> tuple[tqdm, Callable[[float, str], None]]:
    """A percentage bar on stderr fed by Detector.fit's progress(fraction, message) callback."""
    fmt = "{desc}: {percentage:3.0f}%|{bar:20}| {elapsed}{postfix}"
    bar = tqdm(total=100, desc=desc, file=sys.stderr, disable=quiet, leave=False, bar_format=fmt)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return bar, progress


def draw(n: int, k: int, seed: int) -> list[int]:
    """Indices of the k reference images of one few-shot draw (without replacement)."""
    return [int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False)]


def subset_indices(n: int, max_test: int | None) -> list[int]:
    """Sorted indices of the evaluated test images: all, or a fixed random subset."""
    if max_test is None or max_test >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(SUBSET_SEED).choice(n, max_test, False))


class Kept(NamedTuple):
    """What a predicted test image leaves for the metrics: both scorers' patch scores and image
    scores, its size (W, H), its label (1: defective) and its mask as packed bits (None: no
    anomalous pixel). Its maps are drawn again from these (``Detector.heatmap``) when the
    metrics need them."""

    patches: dict[str, np.ndarray]
    scores: dict[str, float]
    size: tuple[int, int]
    label: int
    mask: np.ndarray | None

    @classmethod
    def of(cls, pred, mask: np.ndarray, defect: str) -> Kept:
        """What to keep of prediction ``pred`` of a test image of class ``defect``."""
        patches = {m: getattr(pred, m).patch_scores.copy() for m in METHODS}
        scores = {m: getattr(pred, m).score for m in METHODS}
        packed = np.packbits(mask) if mask.any() else None
        return cls(patches, scores, pred.size, int(defect != "good"), packed)

    def unpacked_mask(self) -> np.ndarray:
        w, h = self.size
        if self.mask is None:
            return np.zeros((h, w), dtype=bool)
        return np.unpackbits(self.mask, count=h * w).view(bool).reshape(h, w)


def scorer_metrics(
    det: Detector, kept: Sequence[Kept], update: Callable[[], object] = lambda: None
) -> dict[str, dict]:
    """Both scorers' four metrics from what the predictions kept; ``update`` after each map
    drawn (each map is drawn twice per scorer, one at a time)."""

    def pairs(method: str):
        for k in kept:
            yield det.heatmap(k.patches[method], k.size), k.unpacked_mask()
            update()

    labels = [k.label for k in kept]
    return {
        m: pixel_metrics(lambda m=m: pairs(m))
        | {"image_auroc": image_auroc([k.scores[m] for k in kept], labels)}
        for m in METHODS
    }


def _score_tests(det: Detector, tests: list, skipped: dict, desc: str, quiet: bool) -> dict:
    """Predict every readable test image and score both scorers; metrics and timings.

    Only the patch scores of each prediction are kept (kilobytes per image); the metrics draw
    the maps again, twice per scorer (:func:`subspace.metrics.pixel_metrics`), so memory holds
    one map at a time plus the anomalous pixels, never the maps of the whole test set.
    """
    kept: list[Kept] = []
    times = []
    bar = tqdm(tests, f"{desc}: predict", unit="img", file=sys.stderr, disable=quiet, leave=False)
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
        kept.append(Kept.of(pred, mask, s.defect))
    if not kept:
        raise UsageError(f"none of the {len(tests)} test images could be read")
    bar = tqdm(  # two passes per scorer
        total=2 * len(METHODS) * len(kept),
        desc=f"{desc}: metrics",
        unit="map",
        file=sys.stderr,
        disable=quiet,
        leave=False,
    )
    with bar:
        metrics = scorer_metrics(det, kept, bar.update)
    return dict(metrics=metrics, n_test=len(kept), times=times)


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
    backbone = open_backbone(config.backbone, pretrained)
    config = replace(config, backbone=backbone.name)
    skipped: dict[str, str] = {}  # unreadable test image -> why
    per_seed, times = [], []
    for seed in seeds:
        names = [train[i] for i in draw(len(train), shots, seed)]
        refs = [load_image(p, name=f"reference {p.name!r}") for p in names]
        bar, progress = fit_bar(f"seed {seed}: fit", quiet)
        with bar:
            det = Detector(replace(config, seed=seed), backbone=backbone).fit(refs, progress)
        got = _score_tests(det, tests, skipped, f"seed {seed}", quiet)
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
