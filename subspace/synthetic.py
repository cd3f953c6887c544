"""Deterministic synthetic example set: a woven metal mesh with a pasted scratch defect.

Needs only numpy and Pillow, so the app and the tests get a defect with an exact mask offline.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_PERIOD = 18.0  # weave cell size in pixels; a few cells per backbone patch at stride 8-16
_STEEL = np.array([148.0, 154.0, 163.0])  # slightly bluish grey (RGB)
_VERSION = 1  # bump when the pictures change, so cached sets are regenerated


def texture(size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """Woven, brushed-metal-like periodic texture.

    Every seed shares the weave; the seed only moves its phase and changes the brushing,
    lighting gradient and sensor noise, as between photos of one defect-free part.

    Args:
        size: (height, width) in pixels.
        seed: Seed of the per-image variation.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)  # (H, W) each
    u = (x + rng.uniform(0, _PERIOD)) / _PERIOD
    v = (y + rng.uniform(0, _PERIOD)) / _PERIOD
    fu, fv = u % 1.0, v % 1.0
    # Over-under weave: each cell shows the horizontal or the vertical thread on top,
    # rounded across the thread and dipping where it passes under its neighbour.
    horizontal = np.sin(np.pi * fv) * (0.55 + 0.45 * np.sin(np.pi * fu) ** 0.5)
    vertical = np.sin(np.pi * fu) * (0.55 + 0.45 * np.sin(np.pi * fv) ** 0.5)
    on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    weave = np.where(on_top, horizontal, vertical)  # (H, W) in [0, 1]

    # Brushing: noise smeared along x gives fine horizontal streaks.
    streaks = rng.normal(size=(h, w + 40))
    streaks = np.apply_along_axis(np.convolve, 1, streaks, np.ones(41) / 41, "valid")
    streaks /= streaks.std() + 1e-8  # (H, W), unit variance
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (x / w - 0.5) + np.sin(angle) * (y / h - 0.5)) * 0.25  # lighting
    shade = 0.45 + 0.5 * weave + 0.04 * streaks + ramp  # (H, W), ~[0.3, 1.1]
    img = shade[..., None] * _STEEL + rng.normal(0, 3.0, size=(h, w, 3))  # (H, W, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def add_scratch(img: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paste a thin dark curved scratch and a small bright blob onto an image.

    Args:
        img: (H, W, 3) uint8 RGB image; not modified.
        seed: Seed of the defect's position and shape.

    Returns:
        The defective (H, W, 3) uint8 image and its (H, W) bool mask.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    lo, hi = np.array([0.15 * w, 0.15 * h]), np.array([0.85 * w, 0.85 * h])  # (x, y)

    # Scratch: a quadratic Bezier curve across a good part of the image.
    p0, p2 = rng.uniform(lo, hi), rng.uniform(lo, hi)
    while np.linalg.norm(p2 - p0) < 0.35 * min(h, w):
        p2 = rng.uniform(lo, hi)
    normal = np.array([p0[1] - p2[1], p2[0] - p0[0]])
    p1 = (p0 + p2) / 2 + normal * rng.uniform(-0.35, 0.35)  # bends either way
    t = np.linspace(0, 1, 200)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (200, 2) as (x, y)
    dark = Image.new("L", (w, h), 0)
    ImageDraw.Draw(dark).line([tuple(p) for p in curve], fill=255, width=max(3, min(h, w) // 80))

    # Blob: a small bright spot, like weld spatter or a glint off a dent.
    c, r = rng.uniform(lo, hi), rng.uniform(0.02, 0.035) * min(h, w)
    bright = Image.new("L", (w, h), 0)
    ImageDraw.Draw(bright).ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)

    # Soft edges look photographed; the mask covers everything visibly changed.
    dark_a = np.asarray(dark.filter(ImageFilter.GaussianBlur(1.0)), np.float64) / 255
    bright_a = np.asarray(bright.filter(ImageFilter.GaussianBlur(1.5)), np.float64) / 255
    out = img.astype(np.float64) * (1 - 0.8 * dark_a[..., None])  # (H, W, 3)
    out = out + (250.0 - out) * 0.85 * bright_a[..., None]
    mask = (dark_a > 0.1) | (bright_a > 0.1)  # (H, W)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def make_set(
    out_dir: str | Path,
    n_normal: int = 6,
    n_query: int = 2,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write a synthetic few-shot set: defect-free references and queries with masks.

    Layout: ``normal/normal_XXX.png``; ``query/XXX_scratch.png`` (all queries but the last,
    each with ``ground_truth/XXX_scratch_mask.png``, 0/255) and a last defect-free
    ``query/XXX_good.png``. An existing set with the same parameters is reused as is.

    Args:
        out_dir: Folder to write into; created if missing.
        n_normal: Number of defect-free reference images (>= 1).
        n_query: Number of query images (>= 2: defective ones, then one defect-free).
        size: (height, width) of every image.
        seed: Base seed; the same seed gives byte-identical files.

    Returns:
        ``{"normal": [...], "query": [...], "masks": [...]}``: paths in order, one mask per
        defective query.
    """
    if n_normal < 1 or n_query < 2:
        raise ValueError(f"need n_normal >= 1 and n_query >= 2, got {n_normal}, {n_query}")
    out = Path(out_dir)
    params = dict(version=_VERSION, n_normal=n_normal, n_query=n_query, size=list(size), seed=seed)
    bad = [out / "query" / f"{j:03d}_scratch.png" for j in range(n_query - 1)]
    paths: dict[str, list[Path]] = {
        "normal": [out / "normal" / f"normal_{i:03d}.png" for i in range(n_normal)],
        "query": [*bad, out / "query" / f"{n_query - 1:03d}_good.png"],
        "masks": [out / "ground_truth" / f"{q.stem}_mask.png" for q in bad],
    }
    stamp = out / "params.json"
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == params
    if fresh and all(p.is_file() for group in paths.values() for p in group):
        return paths

    stamp.unlink(missing_ok=True)
    for sub in ("normal", "query", "ground_truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("*.png"):  # stale files from other parameters
            old.unlink()
    # Seeds are spread so that no query repeats a reference image (up to 5,000 of each).
    base = seed * 10_000
    for i, p in enumerate(paths["normal"]):
        Image.fromarray(texture(size, base + i)).save(p)
    for j, (p, m) in enumerate(zip(paths["query"][:-1], paths["masks"], strict=True)):
        img, mask = add_scratch(texture(size, base + 5_000 + j), seed=base + j)
        Image.fromarray(img).save(p)
        Image.fromarray(mask.astype(np.uint8) * 255).save(m)
    Image.fromarray(texture(size, base + 9_999)).save(paths["query"][-1])
    stamp.write_text(json.dumps(params))  # last, so an interrupted run is redone
    return paths
