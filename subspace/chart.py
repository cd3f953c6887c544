"""The per-dimension error chart of one patch as inline SVG, for ``gr.HTML``.

Drawn by the browser, not rendered on the server: a click on a patch costs a string of a few
tens of KB instead of a matplotlib raster, the chart stays sharp at any zoom or projector
size, follows the page's light or dark theme (``currentColor``), and every dimension tells its
numbers on hover.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

from .widgets import fmt

STAGE_COLOURS = ("#4C78A8", "#72B7B2", "#B279A2", "#9D755D")  # bars per backbone stage
HIGH_COLOUR = "#E4572E"  # bars above the normal 99th percentile
WIDTH, HEIGHT = 900, 300  # viewBox units; the SVG scales to its column's width
LEFT, RIGHT, TOP, BOTTOM = 58, 8, 42, 42  # plot margins inside the viewBox
MAX_HOVER = 512  # beyond this many dimensions only those above the normal 99 % get a tooltip


def nice_step(span: float, ticks: int = 4) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` ticks."""
    raw = span / max(ticks, 1)
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)


def _step_path(values: np.ndarray, x, y, base: float | None = None) -> str:
    """SVG path of a step line centred on each dimension; closed down to ``base`` if given."""
    pts = []
    for i, v in enumerate(values):
        yy = f"{y(v):.1f}"
        pts += [f"{x(i - 0.5):.1f},{yy}", f"{x(i + 0.5):.1f},{yy}"]
    line = "M" + " L".join(pts)
    if base is None:
        return line
    return f"{line} L{x(len(values) - 0.5):.1f},{base:.1f} L{x(-0.5):.1f},{base:.1f} Z"


def dimension_chart(
    residual: np.ndarray,
    stages: Sequence,
    typical: Sequence[float],
    high: Sequence[float],
    title: str,
) -> str:
    """Per-dimension reconstruction error of one patch, grouped by backbone stage.

    Args:
        residual: (d,) |y - y_hat| of the patch.
        stages: objects with ``name``, ``start``, ``stop`` (channel slices per stage).
        typical: (d,) mean |residual| of normal patches (leave-one-out on the references).
        high: (d,) 99th percentile of the same.
        title: heading, e.g. which patch this is.
    Returns:
        HTML: a heading, the SVG chart and its legend.
    """
    r = np.abs(np.asarray(residual, dtype=np.float64))
    typ, hi = np.asarray(typical, dtype=np.float64), np.asarray(high, dtype=np.float64)
    d = r.shape[0]
    if typ.shape != (d,) or hi.shape != (d,):
        raise ValueError(f"need ({d},) typical and high values, got {typ.shape} and {hi.shape}")
    over = r > hi
    top = max(float(r.max(initial=0)), float(hi.max(initial=0))) * 1.08 or 1.0
    step = nice_step(top)
    top = math.ceil(top / step) * step
    plot_w, base = WIDTH - LEFT - RIGHT, HEIGHT - BOTTOM
    x = lambda i: LEFT + (i + 0.5) * plot_w / d  # noqa: E731 (centre of dimension i)
    y = lambda v: base - (base - TOP) * float(v) / top  # noqa: E731
    bar = 0.85 * plot_w / d
    energy = float((r**2).sum()) or 1.0

    parts = [f'<path d="{_step_path(hi, x, y, base)}" fill="currentColor" fill-opacity=".13"/>']
    for t in np.arange(0, top + step / 2, step):  # horizontal grid and y ticks
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
            f'stroke="currentColor" stroke-opacity=".12"/>'
            f'<text x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{fmt(float(t))}</text>'
        )
    colours, names = np.empty(d, dtype=object), np.empty(d, dtype=object)
    for i, st in enumerate(stages):
        colours[st.start : st.stop] = STAGE_COLOURS[i % len(STAGE_COLOURS)]
        names[st.start : st.stop] = str(st.name)
        mid = f"{(x(st.start - 0.5) + x(st.stop - 0.5)) / 2:.1f}"
        share = float((r[st.start : st.stop] ** 2).sum()) / energy
        if i:
            sx = f"{x(st.start - 0.5):.1f}"
            parts.append(
                f'<line x1="{sx}" x2="{sx}" y1="{TOP - 30}" y2="{base}" stroke="currentColor" '
                f'stroke-opacity=".55" stroke-dasharray="2 3"/>'
            )
        parts.append(
            f'<text x="{mid}" y="{TOP - 24}" '
            f'text-anchor="middle"><tspan font-weight="600">{html.escape(str(st.name))}</tspan>'
            f'<tspan x="{mid}" dy="15">'
            f"{share:.0%} of the squared error</tspan></text>"
        )
    colours[over] = HIGH_COLOUR
    for colour in dict.fromkeys(colours):  # one path per colour: compact even for d = 1536
        segs = " ".join(
            f"M{x(i):.2f},{base} V{y(r[i]):.1f}" for i in np.flatnonzero(colours == colour)
        )
        parts.append(f'<path d="{segs}" fill="none" stroke="{colour}" stroke-width="{bar:.2f}"/>')
    parts.append(
        f'<path d="{_step_path(typ, x, y)}" fill="none" stroke="currentColor" stroke-width="1.3"/>'
    )
    parts.append(  # axes
        f'<path d="M{LEFT},{TOP - 4} V{base} H{WIDTH - RIGHT}" fill="none" stroke="currentColor"'
        f' stroke-opacity=".6"/>'
    )
    for t in np.arange(0, d, nice_step(d, 6)):
        parts.append(f'<text x="{x(t):.1f}" y="{base + 16}" text-anchor="middle">{int(t)}</text>')
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">feature '
        f"dimension (d = {d}), grouped by backbone stage</text>"
        f'<text transform="translate(14 {(TOP + base) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">|reconstruction error|</text>'
    )
    parts.append(_hover_targets(r, typ, hi, over, names, x, plot_w / d))
    n_over = int(over.sum())
    heading = f"{html.escape(title)}: <b>{n_over} of {d}</b> dimensions above the normal 99 %"
    label = f"Reconstruction error per feature dimension; {n_over} of {d} above the normal 99 %"
    legend = "".join(
        f"<span><i {swatch}></i>{text}</span>"
        for swatch, text in (
            (f'style="background:{STAGE_COLOURS[0]}"', "this patch (colour: stage)"),
            (f'style="background:{HIGH_COLOUR}"', "this patch, above the normal 99 %"),
            ('class="band"', "normal patches: up to the 99th percentile"),
            ('class="line"', "normal patches: mean"),
        )
    )
    return (
        f'<div class="dimchart"><div class="dimchart-title">{heading}</div>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}" fill="currentColor">'
        f'{"".join(parts)}</svg><div class="dimchart-legend">{legend}</div></div>'
    )


def _hover_targets(r, typ, hi, over, names, x, column: float) -> str:
    """Invisible full-height columns whose tooltips give each dimension's numbers (``names``:
    (d,) stage name of each dimension, ``column``: a dimension's width in viewBox units)."""
    d = r.shape[0]
    dims = np.arange(d) if d <= MAX_HOVER else np.flatnonzero(over)
    if dims.size > MAX_HOVER:  # the largest excesses
        dims = np.sort(dims[np.argsort(-(r - hi)[dims])[:MAX_HOVER]])
    width = max(column, 3.0)
    cols = [
        f'<rect x="{x(i) - width / 2:.1f}" y="{TOP}" width="{width:.1f}" '
        f'height="{HEIGHT - BOTTOM - TOP}"><title>dimension {i} · '
        f"{html.escape(names[i] or '')}\nerror {fmt(r[i])}"
        f"{' (above the normal 99 %)' if over[i] else ''}\n"
        f"normal: mean {fmt(typ[i])}, 99 % {fmt(hi[i])}</title></rect>"
        for i in dims
    ]
    return f'<g class="hover" fill="transparent">{"".join(cols)}</g>'
