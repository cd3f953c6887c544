"""The per-dimension error chart: one bar per dimension, stage colours, tooltips, valid markup."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest

from subspace import chart

SVG = "{http://www.w3.org/2000/svg}"


def stages(*bounds, names=None):
    names = names or [f"stage {i + 1}" for i in range(len(bounds) - 1)]
    return [
        SimpleNamespace(name=names[i], start=bounds[i], stop=bounds[i + 1])
        for i in range(len(bounds) - 1)
    ]


def parse(markup: str) -> ET.Element:
    """The chart's HTML is well-formed XML (the SVG namespace made explicit)."""
    return ET.fromstring(markup.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def bars(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    """{colour: [(x, top y), ...]} from the bar paths (``M x,base V y`` per dimension)."""
    out = {}
    for p in root.iter(f"{SVG}path"):
        if p.get("fill") == "none" and p.get("stroke", "").startswith("#"):
            segs = re.findall(r"M([\d.]+),[\d.]+ V([\d.]+)", p.get("d"))
            out[p.get("stroke")] = [(float(x), float(y)) for x, y in segs]
    return out


def test_one_bar_per_dimension_coloured_by_stage_and_excess():
    d = 152
    r = np.full(d, 0.5)
    r[[3, 100]] = 5.0  # above the normal 99 % (1.0) in each stage
    html = chart.dimension_chart(
        r, stages(0, 40, 152), np.full(d, 0.4), np.full(d, 1.0), "Patch row 2, column 3"
    )
    root = parse(html)
    by_colour = bars(root)
    assert sum(len(v) for v in by_colour.values()) == d
    assert len(by_colour[chart.HIGH_COLOUR]) == 2
    assert len(by_colour[chart.STAGE_COLOURS[0]]) == 39
    assert len(by_colour[chart.STAGE_COLOURS[1]]) == 111
    # Bars grow upwards with the error: the two large ones reach highest (smallest y).
    tall = min(y for _, y in by_colour[chart.HIGH_COLOUR])
    assert all(y > tall for _, y in by_colour[chart.STAGE_COLOURS[0]])
    # x increases with the dimension within a colour.
    xs = [x for x, _ in by_colour[chart.STAGE_COLOURS[1]]]
    assert xs == sorted(xs)
    text = "".join(root.itertext())
    assert "Patch row 2, column 3" in text and "2 of 152" in text
    assert "stage 1" in text and "stage 2" in text and "of the squared error" in text
    # Shares of the squared error per stage: 39 * .25 + 25 = 34.75 and 111 * .25 + 25 = 52.75.
    assert "40% of the squared error" in text and "60% of the squared error" in text
    # Every dimension tells its numbers on hover.
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert len(titles) == d
    assert titles[3].startswith("dimension 3 · stage 1") and "above the normal 99 %" in titles[3]
    assert "error 0.5\n" in titles[4] and "mean 0.4, 99 % 1" in titles[4]


def test_wide_features_keep_tooltips_for_the_excess_only():
    d = 1536
    r = np.ones(d)
    r[::100] = 3.0  # 16 dimensions above the normal 99 %
    html = chart.dimension_chart(r, stages(0, 512, 1536), np.ones(d), np.full(d, 2.0), "WRN")
    root = parse(html)
    assert sum(len(v) for v in bars(root).values()) == d
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert len(titles) == 16 and all("above the normal 99 %" in t for t in titles)
    assert len(html) < 200_000  # sent on every click


def test_names_are_escaped_and_degenerate_input_is_drawn():
    d = 8
    html = chart.dimension_chart(
        np.zeros(d), stages(0, 4, 8, names=["<b>a</b>", "b & c"]), np.zeros(d), np.zeros(d), "<t>"
    )
    root = parse(html)  # still well-formed: nothing injected
    text = "".join(root.itertext())
    assert "<b>a</b>" in text and "b & c" in text and "<t>" in text
    assert "0 of 8" in text
    with pytest.raises(ValueError, match="typical and high"):
        chart.dimension_chart(np.zeros(d), stages(0, 8), np.zeros(3), np.zeros(d), "x")


@pytest.mark.parametrize(
    "span, step", [(3.3, 1.0), (0.9, 0.25), (152, 50), (1536, 500), (0.0, 1.0), (7.9, 2.0)]
)
def test_nice_step(span, step):
    assert chart.nice_step(span, 4 if span < 100 else 6) == pytest.approx(step)
