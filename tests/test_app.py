"""Handler-level tests of app.py with real images, and an API test through gradio_client."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from subspace import result as rs
from subspace import session as ss
from subspace import uploads, viz
from subspace.data import ImageError
from subspace.detector import Detector

N_RUN_OUTPUTS = 13  # 4 images, 2 colour bars, note, plot, gallery, slider, summary, JSON, state


class Progress:
    """Records what the handler reports; stands in for gr.Progress outside a request."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        self.calls.append((fraction, desc))


def select(x: float, y: float) -> gr.SelectData:
    return gr.SelectData(None, {"index": [x, y], "value": None})


def run(app, refs, query, state=None, ratio=0.25, backbone="auto"):
    progress = Progress()
    out = app.detect(refs, query, backbone, ratio, state, progress=progress)
    assert len(out) == N_RUN_OUTPUTS
    return out, progress


@pytest.fixture(scope="module")
def synthetic(app_module):
    refs, query, gallery, paths = app_module.load_example("synthetic")
    return refs, query, paths


@pytest.fixture(scope="module")
def fitted(app_module, synthetic):
    """One detect() on the synthetic set: (outputs, progress, refs, query)."""
    refs, query, _ = synthetic
    out, progress = run(app_module, refs, query)
    yield out, progress, refs, query
    out[-1].close()  # its bundle folder too


# ----------------------------------------------------------------------------- examples
def test_example_sets_fill_references_and_query(app_module):
    for name in ("ballscrew", "synthetic"):
        refs, query, gallery, paths = app_module.load_example(name)
        ex = app_module.EXAMPLES[name]
        assert refs == [str(p) for p in ex.normal] and 1 <= len(refs) <= uploads.MAX_REFERENCES
        assert Path(query).is_file() and Path(query).stem in ex.masks  # a defective one first
        assert isinstance(gallery, gr.Gallery) and gallery.visible
        assert paths == [str(q) for q in ex.query]
    picked = app_module.pick_query(paths, gr.SelectData(None, {"index": 1, "value": None}))
    assert picked == paths[1]


def test_preview_references_thumbnails(app_module, synthetic):
    refs, _, _ = synthetic
    thumbs = app_module.preview_references(refs)
    assert len(thumbs) == len(refs)
    assert all(isinstance(im, Image.Image) and max(im.size) <= 256 for im, _ in thumbs)
    assert [c for _, c in thumbs] == [Path(r).name for r in refs]
    assert app_module.preview_references(None) == []


# ----------------------------------------------------------------------------- detect
def test_detect_returns_every_output(app_module, fitted):
    out, progress, refs, _ = fitted
    q, sg, nn, mask, sg_bar, nn_bar, note, fig, sources, slider, summary, scores, session = out
    assert isinstance(session, ss.Session) and session.result is not None
    res = session.result
    # Four images side by side at one size, the display size of the query.
    sizes = {im.size for im in (q, sg, nn, mask)}
    assert sizes == {res.display.size} and max(res.display.size) == viz.DISPLAY_SIDE
    assert not np.array_equal(np.asarray(sg), np.asarray(nn))
    for bar in (sg_bar, nn_bar):
        assert "cbar-track" in bar and "threshold" in bar
    assert "Selected patch" in note
    assert "<svg" in fig and "dimensions above the normal 99 %" in fig
    # Reference patches: the query patch first, then weighted sources.
    assert sources[0][1] == "query patch" and len(sources) >= 2
    assert all("ref" in cap and ("+" in cap or "-" in cap) for _, cap in sources[1:])
    # The threshold slider spans the calibration and starts at the calibrated threshold.
    assert isinstance(slider, gr.Slider)
    assert slider.minimum <= slider.value <= slider.maximum
    assert slider.minimum <= res.pred.sgfr.vmin + 1e-6
    assert slider.maximum >= res.pred.sgfr.vmax - slider.step
    assert slider.maximum >= res.pred.sgfr.heatmap.max() - slider.step  # the peak can be isolated
    assert "Verdict" in summary and "How unusual" in summary and "Memory bank" in summary
    for key in ("sgfr", "knn", "threshold", "defect_area", "seconds", "bank", "patch"):
        assert key in scores
    assert 0 < scores["sgfr"]["p_value"] <= 1
    assert 0 <= scores["defect_area"] <= 1
    assert scores["n_references"] == len(refs)
    assert scores["bank"]["size"] <= scores["bank"]["full"]
    assert scores["seconds"]["fit"] > 0 and scores["seconds"]["predict"] > 0
    json.dumps(scores)  # JSON-able for the API and the bundle
    # The fit reported progress, from 0 to the end.
    assert progress.calls[0][0] == 0.0 and max(f for f, _ in progress.calls) > 0.9


def test_synthetic_scratch_is_found(app_module, fitted):
    """The default patch is the worst one, and it lies on the ground-truth scratch."""
    out, *_ = fitted
    res = out[-1].result
    assert res.truth is not None  # the example's mask was recognised by content
    box = viz.cell_box(res.display.size, res.pred.grid, *res.patch)
    near = res.truth[max(0, box[1] - 16) : box[3] + 16, max(0, box[0] - 16) : box[2] + 16]
    assert near.any()
    assert out[11]["sgfr"]["refs_below"] == out[11]["n_references"]  # unusual


def test_fit_is_reused_for_a_new_query(app_module, fitted, monkeypatch):
    out, _, refs, _ = fitted
    session = out[-1]
    fit_before = session.result.fit

    def no_fit(*a, **k):
        raise AssertionError("refitted although the references did not change")

    monkeypatch.setattr(Detector, "fit", no_fit)
    good = app_module.EXAMPLES["synthetic"].query[-1]
    out2, progress = run(app_module, refs, str(good), state=session)
    assert out2[-1] is session and session.result.fit is fit_before
    assert out2[11]["fit_reused"] and out2[11]["query"] == good.name
    assert all(desc != "extracting features" for _, desc in progress.calls)


def test_references_are_fitted_before_the_first_run(app_module, monkeypatch, upload_dir):
    """Uploading references starts their fit; the run that follows only predicts."""
    ex = app_module.EXAMPLES["synthetic"]
    refs = [str(p) for p in ex.normal[:3]]  # a set of its own, not the prepared example fit
    progress = Progress()
    steps = list(app_module.prefit(refs, "auto", 0.25, None, progress=progress))
    (under_way, session), (note, same) = steps  # said at once, then when it is done
    assert under_way == "Fitting the references…" and same is session
    assert note.startswith("**Ready:** EfficientNet-Lite0 fitted on 3 references, 25% of the bank")
    assert len(session.fits) == 1
    assert any(desc == "extracting features" for _, desc in progress.calls)

    def no_fit(*a, **k):
        raise AssertionError("refitted although the references were fitted on upload")

    monkeypatch.setattr(Detector, "fit", no_fit)
    out, _ = run(app_module, refs, str(ex.query[0]), state=session)
    assert out[-1] is session and out[11]["fit_reused"]
    # Nothing to fit, or an unusable file: no note and no pop-up (the run says what is
    # wrong), and the visitor's fits are kept.
    broken = upload_dir / "broken.png"
    broken.write_bytes(b"not an image")
    for bad in (None, [], [*refs, str(broken)], [refs[0]] * (uploads.MAX_REFERENCES + 1)):
        steps = app_module.prefit(bad, "auto", 0.25, session, progress=Progress())
        assert list(steps)[-1] == ("", session)
    assert len(session.fits) == 1
    session.close()


def test_a_fit_ahead_says_when_it_uses_another_backbone(app_module, monkeypatch):
    """A Hub backbone picked while the Hub is unreachable: the note says which backbone the
    fit uses instead, next to the dropdown that still shows the one picked."""
    monkeypatch.setitem(app_module.STATUS, "resnet18", "unavailable (Hub unreachable)")
    refs = [str(p) for p in app_module.EXAMPLES["synthetic"].normal[:2]]
    steps = list(app_module.prefit(refs, "resnet18", 0.25, None, progress=Progress()))
    note, session = steps[-1]
    assert note.startswith("**Ready:** EfficientNet-Lite0 fitted on 2 references")
    assert "ResNet-18 needs the Hugging Face Hub, which is unreachable" in note
    session.close()


def test_a_fit_ahead_stops_when_the_visitor_changes_its_inputs(app_module):
    """A fit ahead for references the visitor has since changed gives up its step in the
    model's queue slot, keeps nothing and leaves the note to the fit that replaced it; one
    still queued for earlier inputs does not start."""
    ex = app_module.EXAMPLES["synthetic"]
    first, second = [str(p) for p in ex.normal[:3]], [str(p) for p in ex.normal[3:5]]
    session = app_module.want_fit(first, "auto", 0.25, None)
    said = []

    class ChangeOfMind(Progress):  # the visitor changes the share once features are under way
        def __call__(self, fraction, desc=None):
            said.append(desc)
            if desc == "extracting features":
                app_module.want_fit(first, "auto", 0.5, session)

    steps = list(app_module.prefit(first, "auto", 0.25, session, progress=ChangeOfMind()))
    assert [note for note, _ in steps] == ["Fitting the references…", gr.skip()]
    assert said == ["reading the references"] * 3 + ["extracting features"]
    assert not session.fits  # it stopped at its next step
    # The visitor then picks other references: the fit queued for the share does not start.
    app_module.want_fit(second, "auto", 0.5, session)
    assert list(app_module.prefit(first, "auto", 0.5, session, progress=Progress())) == [
        (gr.skip(), session)
    ]
    steps = list(app_module.prefit(second, "auto", 0.5, session, progress=Progress()))
    assert steps[-1][0].startswith("**Ready:** EfficientNet-Lite0 fitted on 2 references, 50%")
    assert len(session.fits) == 1
    session.close()


def test_prepared_fit_is_shared_by_every_visitor(app_module, monkeypatch):
    """An example set fitted once at start-up serves every visitor; one who asks while it is
    being prepared waits for it instead of fitting the same references beside it."""
    import threading
    import time

    monkeypatch.setattr(ss, "_PREPARED", {})
    monkeypatch.setattr(ss, "_PREPARING", {})
    refs = [str(p) for p in app_module.EXAMPLES["synthetic"].normal[:2]]
    ref_set = uploads.read_references(refs)
    key = ss.fit_key(ref_set[1], "lite0", ss.RATIO_DEFAULT)
    fits = []
    real_fit = Detector.fit
    monkeypatch.setattr(
        Detector, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k)
    )
    prepare = ss.prepare_fits([ref_set], "lite0")
    assert ss.prepared_fit(key, wait_s=0) is None  # announced, not ready yet
    got, said = [], []
    visitor = threading.Thread(
        target=lambda: got.append(
            ss.Session().fit(*ref_set, "lite0", ss.RATIO_DEFAULT, lambda f, m: said.append(m))
        )
    )
    visitor.start()
    time.sleep(0.2)  # the visitor arrives while the fit is being prepared
    assert prepare() == 1  # how many fits are ready for visitors
    visitor.join(timeout=60)
    assert len(fits) == 1 and got == [(ss._PREPARED[key], True)]
    assert said == ["preparing this example set"]
    # Later visitors: the same fit at once, no fit of theirs; another share is not prepared.
    second = ss.Session()
    assert second.fit(*ref_set, "lite0", ss.RATIO_DEFAULT) == (ss._PREPARED[key], True)
    assert second.fits[key] is ss._PREPARED[key] and len(fits) == 1
    assert ss.prepared_fit(ss.fit_key(ref_set[1], "lite0", 0.5)) is None


def test_failed_preparation_leaves_the_visitor_to_fit(monkeypatch):
    monkeypatch.setattr(ss, "_PREPARED", {})
    monkeypatch.setattr(ss, "_PREPARING", {})
    broken = ([uploads.Upload("reference 'x.png'", b"not an image")], "digest")
    assert ss.prepare_fits([broken], "lite0")() == 0  # logs a warning, never raises
    assert ss.prepared_fit(ss.fit_key("digest", "lite0", ss.RATIO_DEFAULT), wait_s=0) is None
    with pytest.raises(ImageError, match="x.png"):
        ss.Session().fit(*broken, "lite0", ss.RATIO_DEFAULT)


def test_shutdown_waits_for_model_work_and_refuses_more(app_module, synthetic, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(ss, "_STOP", threading.Event())  # this process's own stays unset
    monkeypatch.setattr(ss, "_BACKGROUND", [])
    inside, finished = threading.Event(), []

    def request():
        with ss.model_work():
            inside.set()
            time.sleep(0.3)  # scoring under way: not interruptible, so waited for
            finished.append(True)

    worker = threading.Thread(target=request)
    worker.start()
    assert inside.wait(10)
    ss.stop_model_work(timeout=10)
    assert finished == [True]  # returned only once the work had ended
    with pytest.raises(ss.Stopped), ss.model_work():
        pass
    # A visitor's run after the shutdown began: a clear message, nothing computed.
    refs, query, _ = synthetic
    msg = _error(app_module.detect, refs[:2], query, "lite0", 0.25, None, Progress())
    assert "restarting" in msg


def test_the_app_serves_the_librarys_default_bank():
    """The slider starts at Config's sampling, so the app shows what eval and bench measure."""
    from subspace.detector import Config

    assert (Config.ratio, Config.sampling) == (ss.RATIO_DEFAULT, ss.SAMPLING)


def test_cache_key_is_references_backbone_and_ratio(app_module, fitted):
    """A new ratio or reference set refits; at most FITS_PER_SESSION fits are kept."""
    _, _, refs, query = fitted
    session = ss.Session()  # two references keep these fits cheap
    first, _ = run(app_module, refs[:2], query, state=session)
    other_ratio, _ = run(app_module, refs[:2], query, state=session, ratio=0.5)
    other_refs, _ = run(app_module, refs[1:3], query, state=session)
    assert not any(o[11]["fit_reused"] for o in (first, other_ratio, other_refs))
    assert other_ratio[11]["bank"]["size"] > first[11]["bank"]["size"]
    assert len(session.fits) == ss.FITS_PER_SESSION
    again, _ = run(app_module, refs[1:3], query, state=session)
    assert again[11]["fit_reused"]


def test_normal_query_looks_calm(app_module, fitted):
    """A defect-free query stays on the low end of the fixed colour scale."""
    out, _, refs, _ = fitted
    session = out[-1]  # its fit is reused: only predictions here
    good = str(app_module.EXAMPLES["synthetic"].query[-1])
    bad_out, _ = run(app_module, refs, fitted[3], state=session)
    bad_area = bad_out[11]["defect_area"]
    good_out, _ = run(app_module, refs, good, state=session)
    s = good_out[-1].result.pred.sgfr
    assert np.median(viz.normalize(s.heatmap, s.vmin, s.vmax)) < 0.5
    assert good_out[11]["defect_area"] < bad_area


# ----------------------------------------------------------------------------- explain
def test_clicking_a_patch_changes_plot_and_sources(app_module, fitted):
    out, *_ = fitted
    session = out[-1]
    res = session.result
    before = (res.patch, out[8][0][0].tobytes())
    w, h = res.display.size
    clicked = app_module.select_patch(session, select(5, h - 5))  # bottom-left corner
    assert len(clicked) == 9
    q, sg, nn, mask, note, fig, sources, scores, state = clicked
    gy, gx = session.result.patch
    assert (gy, gx) == (res.pred.grid[0] - 1, 0) and (gy, gx) != before[0]
    assert scores["patch"] == {
        "row": gy,
        "col": gx,
        "score": pytest.approx(float(res.pred.sgfr.patch_scores[gy, gx])),
    }
    assert f"row {gy + 1}, column {gx + 1}" in note
    assert f"row {gy + 1}, column {gx + 1}" in fig and sources[0][0].tobytes() != before[1]
    # The API form takes query pixels.
    qx, qy = res.query.size[0] - 1, 0
    out2 = app_module.inspect(qx, qy, session)
    assert session.result.patch == (0, res.pred.grid[1] - 1) and len(out2) == 9


def test_threshold_moves_mask_without_refit_or_predict(app_module, fitted, monkeypatch):
    out, *_ = fitted
    session = out[-1]
    for name in ("fit", "predict"):
        monkeypatch.setattr(Detector, name, lambda *a, **k: pytest.fail("model was rerun"))
    s = session.result.pred.sgfr
    low_mask, low_summary, low_scores, shown, st = app_module.set_threshold(s.vmin, session)
    assert shown == gr.skip()  # a value inside the range: the slider already shows it
    peak = float(s.heatmap.max())
    high_mask, _, high_scores, _, _ = app_module.set_threshold(peak + 1, session)
    assert st is session and session.result.threshold == peak + 1
    assert low_scores["defect_area"] > high_scores["defect_area"] == 0.0
    assert not np.array_equal(np.asarray(low_mask), np.asarray(high_mask))
    assert "Defect area" in low_summary


def test_result_images_are_sent_as_sharp_jpeg(app_module):
    """The result images go out as JPEG at full chroma resolution: a 1-pixel red outline on
    grey keeps its colour (4:2:0 subsampling would smear it to about (160, 80, 80))."""
    a = np.full((64, 96, 3), 128, np.uint8)
    a[:, 31] = viz.MASK_RGB
    data = app_module.mask_out.postprocess(Image.fromarray(a))
    assert data.orig_name == "mask.jpg"
    with Image.open(data.path) as sent:
        assert sent.format == "JPEG" and sent.size == (96, 64)
        got = np.asarray(sent.convert("RGB")).astype(int)
    assert np.abs(got[:, 31] - np.array(viz.MASK_RGB)).max() <= 12
    assert np.abs(got[:, 29] - 128).max() <= 12
    assert app_module.mask_out.postprocess(None) is None


def test_export_bundle(app_module, fitted):
    out, *_ = fitted
    session = out[-1]
    app_module.set_threshold(session.result.pred.sgfr.threshold, session)
    file = app_module.export(session)
    path = Path(file)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {"heatmap_sgfr.png", "overlay_sgfr.png", "map_sgfr.npy", "scores.json"} <= names
        assert {"heatmap_knn.png", "overlay_knn.png", "map_knn.npy", "mask_sgfr.png"} <= names
        scores = json.loads(z.read("scores.json"))
        with z.open("map_sgfr.npy") as f:
            raw = np.load(f)
    res = session.result
    assert raw.shape == (res.query.size[1], res.query.size[0])
    np.testing.assert_allclose(raw, res.pred.sgfr.heatmap)
    assert scores["threshold"] == pytest.approx(res.threshold)
    folder = session.folder
    assert folder.is_dir()
    session.close()  # what the gr.State delete callback does: memory and files returned
    assert not folder.exists() and session.result is None and not session.fits


# ----------------------------------------------------------------------------- bad input
def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "Traceback" not in message
    return message


def test_bad_inputs_give_clear_messages(app_module, synthetic, upload_dir):
    refs, query, _ = synthetic
    pdf = upload_dir / "scan.png"
    pdf.write_bytes(b"%PDF-1.4 not an image")
    p = Progress()
    assert "scan.png" in _error(app_module.detect, refs, str(pdf), "auto", 0.25, None, p)
    assert "reference" in _error(app_module.detect, refs + [str(pdf)], query, "auto", 0.25, None, p)
    assert "query" in _error(app_module.detect, refs, None, "auto", 0.25, None, p).lower()
    assert "reference" in _error(app_module.detect, [], query, "auto", 0.25, None, p)
    too_many = [refs[0]] * (uploads.MAX_REFERENCES + 1)
    assert str(uploads.MAX_REFERENCES) in _error(
        app_module.detect, too_many, query, "auto", 0.25, None, p
    )
    assert "backbone" in _error(app_module.detect, refs, query, "vgg", 0.25, None, p).lower()
    # A bad file among the references: previews of the good ones, a warning for the bad one.
    with pytest.warns(UserWarning, match="scan.png"):
        thumbs = app_module.preview_references([*refs[:2], str(pdf)])
    assert len(thumbs) == 2


def test_run_checks_its_inputs_first_and_names_every_bad_reference(
    app_module, synthetic, upload_dir
):
    """The page's run first checks its inputs in an event that only outputs the session, so a
    bad input is named without marking the results on show as errors. It names every
    unusable reference at once; it keeps which reference sets decode, nothing of the query."""
    refs, query, _ = synthetic
    pdf, text = upload_dir / "scan.png", upload_dir / "notes.jpg"
    pdf.write_bytes(b"%PDF-1.4 not an image")
    text.write_text("not an image either")
    session = ss.Session()
    message = _error(app_module.check_run, [*refs[:2], str(pdf), str(text)], query, session)
    assert "scan.png" in message and "notes.jpg" in message
    assert "query" in _error(app_module.check_run, refs, None, session).lower()
    assert "scan.png" in _error(app_module.check_run, refs, str(pdf), session)
    assert not session.checked  # nothing kept from bad input
    assert app_module.check_run(refs, query, session) is session
    assert len(session.checked) == 1 and session.account() == 0  # no image held
    out, _ = run(app_module, refs, query, state=session)
    assert out[11]["query"] == Path(query).name
    # The page's run: the check, then the detector; the check's only output is the session.
    check = next(fn for fn in app_module.demo.fns.values() if fn.fn is app_module.check_run)
    assert [type(b) for b in check.outputs] == [gr.State]
    session.close()


def test_threshold_typed_out_of_range_is_clamped_and_shown(app_module, fitted):
    """A typed threshold beyond the result's range is clamped to it, not refused, and the
    slider then shows the value the mask used (gradio's own slider raises an error and keeps
    the box showing the typed value)."""
    slider = next(b for b in app_module.demo.blocks.values() if b.elem_id == "threshold")
    assert slider.get_block_name() == "slider"  # the stock front-end component
    assert slider.preprocess(1e9) == 1e9  # the range is the result's: the handler clamps
    with pytest.raises(gr.Error, match="threshold is missing"):
        slider.preprocess(None)
    with pytest.raises(gr.Error, match="threshold must be a number"):
        slider.preprocess("high")
    _, _, refs, query = fitted
    out, _ = run(app_module, refs, query, state=ss.Session())  # the example's fit is reused
    session = out[-1]
    lo, hi, _ = rs.threshold_range(session.result)
    for typed, used in ((hi + 1000, hi), (lo - 5, lo)):
        *_, scores, shown, _ = app_module.set_threshold(typed, session)
        assert shown.value == used and session.result.threshold == used
        assert scores["threshold"] == used
    *_, shown, _ = app_module.set_threshold((lo + hi) / 2, session)
    assert shown == gr.skip()  # inside the range: the slider already shows it
    session.close()


def test_undecodable_query_upload_gets_a_clear_message(app_module, upload_dir):
    """gradio decodes an Image upload before the handler: that error must be readable too."""
    from gradio.data_classes import ImageData

    bad = upload_dir / "photo.png"
    bad.write_text("not an image at all")
    query_in = next(b for b in app_module.demo.blocks.values() if b.elem_id == "query")
    assert query_in.get_block_name() == "image"  # the stock front-end component
    with pytest.raises(gr.Error, match="photo.png"):
        query_in.preprocess(ImageData(path=str(bad), orig_name="photo.png"))


def test_handlers_before_any_run_say_to_run_first(app_module):
    """API clients (and the page) are told what to do, not handed an empty update."""
    calls = {
        "set the mask threshold": lambda: app_module.set_threshold(0.5, None),
        "click a patch": lambda: app_module.select_patch(None, select(1, 1)),
        "download its results": lambda: app_module.export(None),
    }
    for then, call in calls.items():
        with pytest.raises(gr.Error, match=f"Run the detector first, then {then}"):
            call()
    with pytest.raises(gr.Error, match="click a patch"):
        app_module.inspect(1, 1, None)


def test_unreachable_hub_backbone_falls_back(app_module):
    status = {"wrn50": "unavailable (Hub unreachable)", "lite0": "bundled"}
    name, warning = ss.choose_backbone("wrn50", status)
    assert name == "lite0" and "unreachable" in warning
    assert ss.choose_backbone("auto", status) == ("lite0", None)
    assert "unreachable" in ss.hub_note(status)
    labels = dict((v, k) for k, v in ss.backbone_choices(status))
    assert labels["wrn50"] == "WideResNet-50 (Hub unreachable)"
    assert labels["lite0"] == "EfficientNet-Lite0 (offline)"
    assert labels["auto"] == "auto: EfficientNet-Lite0 (offline)"  # short: the dropdown is narrow


def test_backbone_that_cannot_load_falls_back(app_module, synthetic, monkeypatch):
    """Hub weights listed as cached but unloadable (here: Hub offline): bundled one, warned."""
    refs, query, _ = synthetic
    monkeypatch.setitem(app_module.STATUS, "resnet18", "cached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network
    with pytest.warns(UserWarning, match="could not be loaded"):
        out, _ = run(app_module, refs[:2], query, state=ss.Session(), backbone="resnet18")
    assert out[11]["backbone"] == "lite0"


# ----------------------------------------------------------------------------- wiring
def test_launch_and_queue_settings(app_module, monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    kw = app_module.launch_kwargs()
    assert kw["server_name"] == "127.0.0.1"
    assert kw["max_file_size"] == app_module.MAX_FILE_BYTES
    assert "allowed_paths" not in kw and kw["theme"] is not None and kw["css"]
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert app_module.launch_kwargs()["server_name"] == "0.0.0.0"
    queue = app_module.demo._queue
    assert queue.max_size is not None and queue.max_size <= 64
    assert queue.default_concurrency_limit == 1


def test_event_handlers_have_api_names(app_module):
    names = {fn.api_name for fn in app_module.demo.fns.values()}
    for name in ("detect", "inspect", "threshold", "bundle", "preview_references"):
        assert name in names
    # Each change of the references, backbone or bank share fits ahead of the run.
    ahead = [fn for fn in app_module.demo.fns.values() if fn.fn is app_module.prefit]
    assert len(ahead) == 3 and all(fn.concurrency_id == "model" for fn in ahead)
    # ... each preceded by a note of what the visitor wants, outside the model's slot.
    wish = [fn for fn in app_module.demo.fns.values() if fn.fn is app_module.want_fit]
    assert len(wish) == 3 and all(fn.concurrency_id != "model" for fn in wish)
    assert {f"example_{n}" for n in app_module.EXAMPLES} <= names
    states = [b for b in app_module.demo.blocks.values() if isinstance(b, gr.State)]
    session_state = [s for s in states if s.delete_callback is ss.close_session]
    assert session_state and session_state[0].time_to_live == ss.SESSION_TTL_S


# ----------------------------------------------------------------------------- live API
@pytest.mark.slow
def test_api_through_gradio_client(live_app, app_module):
    from gradio_client import Client, handle_file

    url, _ = live_app
    client = Client(url, verbose=False)
    ex = app_module.EXAMPLES["synthetic"]
    refs = [handle_file(str(p)) for p in ex.normal[:3]]  # three keep the fit short
    out = client.predict(
        refs=refs,
        query=handle_file(str(ex.query[0])),
        backbone="lite0",
        ratio=0.25,
        api_name="/detect",
    )
    assert len(out) == 12  # every output but the state
    for path in out[:4]:
        assert Image.open(path).size == Image.open(out[0]).size
        assert Image.open(path).format == "JPEG"
    scores = out[11]
    assert scores["backbone"] == "lite0" and scores["sgfr"]["score"] > 0
    assert not scores["fit_reused"]
    # Same client session: the fit is reused; the threshold and a patch can be explored.
    mask, summary, scores2, _ = client.predict(
        threshold=scores["sgfr"]["vmax"], api_name="/threshold"
    )
    assert scores2["threshold"] == pytest.approx(scores["sgfr"]["vmax"])
    assert scores2["defect_area"] <= scores["defect_area"]
    inspected = client.predict(x=0, y=0, api_name="/inspect")
    assert inspected[7]["patch"]["row"] == 0 and inspected[7]["patch"]["col"] == 0
    assert "<svg" in inspected[5] and "Patch row 1, column 1" in inspected[5]
    bundle = client.predict(api_name="/bundle")
    with zipfile.ZipFile(bundle) as z:
        assert "scores.json" in z.namelist()
    again = client.predict(
        refs=refs,
        query=handle_file(str(ex.query[-1])),
        backbone="lite0",
        ratio=0.25,
        api_name="/detect",
    )
    assert again[11]["fit_reused"]
