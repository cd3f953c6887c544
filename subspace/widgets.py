"""The page's HTML pieces: the fixed-scale colour bar, result cards, captions, and the CSS.

Plain strings for ``gr.HTML``; every user-supplied text is escaped.
"""

from __future__ import annotations

import html

import numpy as np

from .viz import CMAP, lut, normalize


def fmt(x: float) -> str:
    """Compact number: 3 significant digits, no scientific notation for usual ranges."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def colorbar_html(
    vmin: float, vmax: float, threshold: float, score: float | None, title: str, cmap: str = CMAP
) -> str:
    """A colour bar for the fixed scale with the threshold tick and the image score marker."""
    stops = ", ".join(f"rgb{tuple(int(v) for v in c)}" for c in lut(cmap)[::32])
    pos = lambda v: 100.0 * float(normalize(np.float32(v), vmin, vmax))  # noqa: E731
    marker = ""
    if score is not None:
        beyond = "&#9656;" if score > vmax else ""
        marker = (
            f'<div class="cbar-score" style="left:{pos(score):.1f}%" '
            f'title="image score {fmt(score)}">&#9660;<span>{fmt(score)}{beyond}</span></div>'
        )
    return (
        f'<div class="cbar"><div class="cbar-title">{html.escape(title)}</div>'
        f'<div class="cbar-track" style="background:linear-gradient(to right, {stops})">'
        f'<div class="cbar-thr" style="left:{pos(threshold):.1f}%"></div>{marker}</div>'
        f'<div class="cbar-ticks"><span>{fmt(vmin)} normal</span>'
        f"<span>threshold {fmt(threshold)}</span><span>{fmt(vmax)}+</span></div></div>"
    )


def note_html(title: str, detail: str) -> str:
    """A two-line caption (``detail`` may hold HTML entities)."""
    return f'<div class="cbar"><div class="cbar-title">{html.escape(title)}</div>{detail}</div>'


def _card(title: str, value: str, detail: str, tone: str = "") -> str:
    return (
        f'<div class="card {tone}"><div class="card-title">{html.escape(title)}</div>'
        f'<div class="card-value">{value}</div>'
        f'<div class="card-detail">{detail}</div></div>'
    )


def summary_html(s: dict) -> str:
    """Result cards from :func:`subspace.session.scores` output (a plain dict)."""
    sg, nn, bank, sec = s["sgfr"], s["knn"], s["bank"], s["seconds"]
    n = s["n_references"]
    unusual = sg["refs_below"] == n
    verdict = "Unusual" if unusual else "Within normal range"
    lo, hi = sg["reference_range"]
    cards = [
        _card(
            "Verdict",
            verdict,
            f"image score <b>{fmt(sg['score'])}</b> vs references {fmt(lo)}&ndash;{fmt(hi)}",
            "bad" if unusual else "good",
        ),
        _card(
            "How unusual",
            f"above {sg['refs_below']} of {n}",
            f"references (leave-one-out), p = {sg['p_value']:.2f}",
        ),
        _card(
            "Defect area",
            f"{100 * s['defect_area']:.2f} %",
            f"of the image above threshold {fmt(s['threshold'])}",
        ),
        _card(
            "Time",
            f"{sec['predict']:.2f} s",
            f"predict &middot; fit {sec['fit']:.1f} s" + (" (reused)" if s["fit_reused"] else ""),
        ),
        _card(
            "Memory bank (patches)",
            f"{bank['size']:,}",
            f"kept of {bank['full']:,} &middot; {bank['bytes'] / 2**20:.1f} MiB &middot; "
            f"{html.escape(bank['sampling'])} sampling {bank['ratio']:.0%}",
        ),
        _card(
            "Baseline score",
            fmt(nn["score"]),
            f"nearest neighbour: above {nn['refs_below']} of {n}, p = {nn['p_value']:.2f}",
        ),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


CSS = """
#header h1 {font-size: 1.85rem; margin: 0 0 .25rem 0; line-height: 1.2}
#header p {margin: 0; font-size: 1.02rem; max-width: 76rem; color: var(--body-text-color);
          opacity: .78}
#header .steps {margin-top: .45rem; font-size: .95rem}
.help p {font-size: .93rem; color: var(--body-text-color); opacity: .78; margin: .2rem 0}
.hub-note p {font-size: .85rem; color: #b35c00; margin: 0}
.cbar {font-size: .8rem; padding: 0 .2rem .2rem .2rem}
.cbar-title {font-weight: 600; color: var(--body-text-color)}
.cbar-track {position: relative; height: 14px; border-radius: 3px; margin-top: 20px;
             border: 1px solid var(--border-color-primary)}
.cbar-thr {position: absolute; top: -4px; bottom: -4px; width: 3px; margin-left: -1px;
           background: var(--body-text-color); border-radius: 1px}
.cbar-score {position: absolute; top: -19px; transform: translateX(-50%); white-space: nowrap;
             font-weight: 700; color: var(--body-text-color); font-size: .8rem}
.cbar-score span {margin-left: .15rem}
.cbar-ticks {display: flex; flex-wrap: wrap; justify-content: space-between; gap: 0 .5rem;
             color: var(--body-text-color); opacity: .78}
.cbar-ticks span {white-space: nowrap}  /* a narrow bar wraps its labels, never runs them on */
.cards {display: grid; grid-template-columns: repeat(auto-fit, minmax(185px, 1fr)); gap: .6rem}
.card {border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg);
       padding: .55rem .8rem; background: var(--block-background-fill)}
.card-title {font-size: .75rem; text-transform: uppercase; letter-spacing: .05em;
             color: var(--body-text-color); opacity: .78}
.card-value {font-size: 1.55rem; font-weight: 700; line-height: 1.3; color: var(--body-text-color)}
.card.bad .card-value {color: #d9480f}
.card.good .card-value {color: #2f9e44}
.card-detail {font-size: .85rem; color: var(--body-text-color); opacity: .78}
.section h4 {margin: .2rem 0 .1rem 0}
.section p {font-size: .9rem; color: var(--body-text-color); opacity: .78; margin: 0}
#controls button {width: 100%}
/* The empty upload boxes' prompt below their floating labels: gradio centres icon and text in
   the box, where the label covers the icon (the query box's wholly). Text only, pushed down. */
#refs .upload-container .wrap, #query .upload-container .wrap {padding-top: 2rem; gap: 0}
#refs [data-testid="upload-icon"], #query [data-testid="upload-icon"] {display: none}
.imgtitle p {margin: 0 0 -.3rem .2rem; font-size: .95rem; white-space: nowrap; overflow: hidden;
             text-overflow: ellipsis}
#sources .caption-label, #refs-gallery .caption-label {display: none}
#example-queries .grid-container {grid-auto-rows: 76px}  /* one row of short tiles, */
#example-queries .thumbnail-item {aspect-ratio: auto; height: 76px}  /* captions in view */
/* Tiles shrink with their column instead of scrolling sideways (gradio's minimum is 100 px):
   every example query and every rebuilding patch stays in view; references wrap. */
#example-queries .grid-container, #sources .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr))}
#sources .grid-container {grid-auto-rows: auto}  /* square tiles, not 100 px tall ones */
#refs-gallery {height: auto !important; min-height: 92px}
#refs-gallery .empty {min-height: 0; height: 92px}  /* no references yet: a short box */
#refs-gallery .grid-wrap {height: auto !important; max-height: 240px !important}
#refs-gallery .grid-container {grid-template-columns: repeat(auto-fill, minmax(64px, 1fr));
                              grid-auto-rows: auto}
.dimchart {font-size: .85rem; color: var(--body-text-color)}
.dimchart svg {display: block; width: 100%; min-width: 560px; height: auto; font-size: 13px}
#dims {overflow-x: auto}  /* a phone scrolls the chart rather than shrink its text away */
.offscreen {display: none !important}
/* The example queries' label above its tiles, not over them. */
#example-queries [data-testid="block-label"] {position: static; margin-bottom: .3rem}
.dimchart .hover rect:hover {fill: currentColor; fill-opacity: .1}
.dimchart-legend {display: flex; flex-wrap: wrap; justify-content: center; gap: .2rem 1.1rem;
                  font-size: .8rem; color: var(--body-text-color); opacity: .78}
.dimchart-legend i {display: inline-block; width: .8rem; height: .8rem; border-radius: 2px;
                    margin-right: .35rem; vertical-align: -.1rem}
.dimchart-legend i.band {background: currentColor; opacity: .3}
.dimchart-legend i.line {background: var(--body-text-color); height: 2px; vertical-align: .2rem}
#sources .grid-wrap {height: auto !important; min-height: 0 !important; max-height: none !important}
"""
