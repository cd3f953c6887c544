"""Drawing: fixed colour scale, overlays, masks, thumbnails and the results bundle."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from subspace import viz, widgets


def grey(size=(200, 100), value=128) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def test_fixed_scale_never_stretches_per_image():
    """A calm map stays at the bottom of the scale whatever its own min and max are."""
    calm = np.linspace(0.0, 0.9, 100, dtype=np.float32).reshape(10, 10)  # all below vmin=1
    assert (viz.normalize(calm, 1.0, 3.0) == 0).all()
    bottom = viz.colorize(np.zeros((1, 1)), 0.0, 1.0)[0, 0]
    assert (viz.colorize(calm, 1.0, 3.0) == bottom).all()
    # The same value gets the same colour in two different images.
    a = viz.colorize(np.array([[2.0, 0.0]]), 1.0, 3.0)
    b = viz.colorize(np.array([[2.0, 9.0]]), 1.0, 3.0)
    assert (a[0, 0] == b[0, 0]).all()
    np.testing.assert_allclose(viz.normalize(np.array([1.0, 2.0, 3.0, 4.0]), 1, 3), [0, 0.5, 1, 1])


def test_overlay_calm_vs_hot():
    img = grey()
    calm = viz.overlay(img, np.zeros((50, 100)), 1.0, 2.0)
    hot = viz.overlay(img, np.full((50, 100), 5.0), 1.0, 2.0)
    assert calm.size == hot.size == img.size  # the map is resized to the image
    diff_calm = np.abs(np.asarray(calm, float) - 128).mean()
    diff_hot = np.abs(np.asarray(hot, float) - 128).mean()
    assert diff_calm < diff_hot
    top = viz.colorize(np.ones((1, 1)), 0, 1)[0, 0].astype(float)
    expected = 128 * (1 - viz.ALPHA[1]) + top * viz.ALPHA[1]
    np.testing.assert_allclose(np.asarray(hot, float)[10, 10], expected, atol=1.0)


def test_mask_overlay_marks_defect_and_truth():
    img = grey((100, 100))
    heat = np.zeros((100, 100), np.float32)
    heat[40:60, 40:60] = 10.0
    truth = np.zeros((100, 100), bool)
    truth[10:30, 10:30] = True
    out = np.asarray(viz.mask_overlay(img, heat, 5.0, truth)).astype(int)
    r, g, b = out[50, 50]
    assert r > g + 40 and r > b + 40  # inside the predicted mask: red
    assert tuple(out[40, 50]) == viz.MASK_RGB  # its contour
    assert tuple(out[10, 20]) == viz.TRUTH_RGB  # ground-truth outline
    assert tuple(out[90, 90]) == (102, 102, 102)  # elsewhere only dimmed
    assert viz.defect_area(heat, 5.0) == pytest.approx(0.04)
    empty = viz.mask_overlay(img, heat, 100.0)  # nothing above threshold: no contour
    assert (np.asarray(empty) == 102).all()


def test_display_geometry_and_cells():
    assert viz.fit_display((1130, 460)) == (768, 313)
    assert viz.fit_display((100, 400)) == (192, 768)
    small = viz.to_display(grey((64, 32)))
    assert small.size == (768, 384)  # upscaled: the browser then never scales it up
    grid = (20, 50)
    boxes = [viz.cell_box((768, 313), grid, gy, gx) for gy in range(20) for gx in range(50)]
    covered = np.zeros((313, 768), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert viz.cell_box((768, 313), grid, 19, 49)[2:] == (768, 313)


def test_mark_cell_draws_frame_only():
    img = grey((100, 100))
    out = np.asarray(viz.mark_cell(img, (40, 40, 60, 60)))
    assert (out[50, 50] == 128).all()  # inside untouched
    assert (out[40 - 2, 50] == 255).all() or (out[40 - 1, 50] == 255).all()
    assert (np.asarray(img) == 128).all()  # the input is not modified


def test_colorbar_marks_threshold_and_score():
    html = widgets.colorbar_html(10.0, 30.0, 20.0, 25.0, "SGFR <error>")
    assert "SGFR &lt;error&gt;" in html  # escaped
    assert "left:50.0%" in html  # threshold
    assert "left:75.0%" in html  # score
    over = widgets.colorbar_html(10.0, 30.0, 20.0, 99.0, "x")
    assert "left:100.0%" in over and "&#9656;" in over  # clipped, with a 'beyond' mark
    assert "cbar-score" not in widgets.colorbar_html(10.0, 30.0, 20.0, None, "x")


def test_patch_thumbnails_scale_boxes():
    query = grey((300, 150), 50)
    ref = Image.new("RGB", (200, 100), (255, 0, 0))
    ref.paste((0, 0, 255), (100, 50, 200, 100))  # blue bottom-right quarter
    sources = [
        dict(image=0, coef=0.75, box=(200, 100, 400, 200)),
        dict(image=0, coef=-0.2, box=(0, 0, 100, 100)),
    ]
    thumbs = viz.patch_thumbnails(query, (100, 50, 120, 70), [ref], [0.5], sources, "query patch")
    assert [c for _, c in thumbs] == ["query patch", "ref 1 · +0.75", "ref 1 · -0.20"]
    assert all(max(im.size) == viz.THUMB_SIDE for im, _ in thumbs)
    # Boxes are in original pixels; the reference was shown at half size: blue quarter.
    top = slice(0, 100)  # above the drawn label band
    assert np.asarray(thumbs[1][0])[top, :, 2].mean() > 200
    assert np.asarray(thumbs[2][0])[top, :, 0].mean() > 200


def test_summary_html_numbers():
    s = dict(
        sgfr=dict(score=43.1, p_value=1 / 7, refs_below=6, reference_range=[13.6, 22.6]),
        knn=dict(score=46.9, p_value=0.5, refs_below=3),
        n_references=6,
        defect_area=0.0123,
        threshold=17.8,
        seconds=dict(fit=1.2, predict=0.09),
        fit_reused=True,
        bank=dict(size=1500, full=6000, bytes=930000, sampling="usage", ratio=0.25),
    )
    html = widgets.summary_html(s)
    for text in (
        "Unusual",
        "43.1",
        "above 6 of 6",
        "1.23 %",
        "0.09 s",
        "(reused)",
        "1,500",
        "6,000",
    ):
        assert text in html
    s["sgfr"]["refs_below"] = 2
    assert "Within normal range" in widgets.summary_html(s)


def test_write_bundle_round_trip(tmp_path):
    query = grey((64, 32))
    rng = np.random.default_rng(0)
    maps = {"sgfr": rng.random((32, 64), dtype=np.float32), "knn": rng.random((32, 64)) * 2}
    scores = {"sgfr": {"score": 1.0}, "threshold": 0.5}
    path = viz.write_bundle(
        tmp_path / "out" / "b.zip", query, maps, {"sgfr": (0, 1), "knn": (0, 2)}, 0.5, scores
    )
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(
            [f"{k}_{m}.{e}" for m in ("sgfr", "knn") for k, e in
             (("heatmap", "png"), ("overlay", "png"), ("map", "npy"))]
            + ["mask_sgfr.png", "scores.json"]
        )  # fmt: skip
        assert json.loads(z.read("scores.json")) == scores
        with z.open("map_sgfr.npy") as f:
            np.testing.assert_array_equal(np.load(f), maps["sgfr"])
        with z.open("mask_sgfr.png") as f:
            mask = np.asarray(Image.open(f))
        with z.open("overlay_knn.png") as f:
            assert Image.open(f).size == query.size
    np.testing.assert_array_equal(mask > 0, maps["sgfr"] > 0.5)
