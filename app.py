"""Few-shot anomaly localisation demo: fit on a few normal images, localise, explain each patch.

UI wiring only: the method lives in ``subspace.detector``, drawing in ``subspace.viz`` and the
per-visitor state in ``subspace.session``. ``python app.py`` serves it on 127.0.0.1 (or on
``GRADIO_SERVER_NAME``); ``demo`` is the Blocks object, so ``gradio app.py`` reloads it.
Environment: ``SUBSPACE_BACKBONE`` preselects a backbone (default ``auto``).
"""

from __future__ import annotations

import os

# Before torch loads: on a shared 2-core machine, OpenMP threads that spin at barriers stall
# each other whenever anything else needs a core (measured under load: fit of the 6 ball-screw
# references 4-8 s with sleeping threads, 12-54 s with spinning ones).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from subspace import scratch  # noqa: E402
from subspace.presets import PRESETS, availability  # noqa: E402

# Everything written for visitors goes to this process's own folder, which gradio uses as its
# cache: swept while the app runs, removed at exit (subspace.scratch).
TEMP = scratch.app_folder()
os.environ["GRADIO_TEMP_DIR"] = str(TEMP)

_status: dict[str, str] = {}
# The Hub probe takes up to 3 s offline: run it while gradio and the example sets load.
_probe = threading.Thread(target=lambda: _status.update(availability()), daemon=True)
_probe.start()

import gradio as gr  # noqa: E402
from gradio import processing_utils  # noqa: E402
from gradio.data_classes import ImageData, ListFiles  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from subspace import examples, uploads, viz, widgets  # noqa: E402
from subspace import result as rs  # noqa: E402
from subspace import session as ss  # noqa: E402
from subspace.bodylimit import BodyLimit  # noqa: E402
from subspace.data import MAX_FILE_BYTES, ImageError  # noqa: E402
from subspace.store import ServerFull  # noqa: E402

log = logging.getLogger("app")
ROOT = Path(__file__).resolve().parent
# The only files a client may name: what gradio received for this app, and the examples.
uploads.receive_only_from(TEMP, ROOT / "examples")


async def _no_downloads(url: str, cache_dir: str) -> str:
    """gradio fetches a file payload whose path is an http(s) URL, whole and in memory, while
    the call holds its queue slot: the app takes uploads only."""
    raise gr.Error("Upload the image file; the app does not fetch URLs.", print_exception=False)


processing_utils.async_ssrf_protected_download = _no_downloads
SWEEP_EVERY_S = 300  # the temp folder is swept this often...
UNUSED_S = 2 * ss.SESSION_TTL_S  # ...of files unused this long (a session expires sooner)
EXAMPLES = examples.example_sets(ROOT / "examples")
TRUTH = examples.TruthIndex(list(EXAMPLES.values()))
_probe.join()
STATUS = dict(_status) or {"lite0": "bundled"}  # a failed probe: only the bundled one is safe
CHOICES = ss.backbone_choices(STATUS)
DEFAULT_BACKBONE = os.environ.get("SUBSPACE_BACKBONE", "auto")
if DEFAULT_BACKBONE not in {v for _, v in CHOICES}:
    DEFAULT_BACKBONE = "auto"
RESULT_MIN_WIDTH = 220  # px, one result image's column
PAIR_MIN_WIDTH = 2 * RESULT_MIN_WIDTH + 16  # two result columns and the gap between them
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
HEADER = """<h1>Few-shot anomaly localisation, explained</h1>
<p>Show it a few <b>defect-free</b> images of a part. It learns what normal looks like by
subspace-guided feature reconstruction (SGFR), then shows <b>where</b> a new image differs and
<b>why</b>: which feature dimensions could not be rebuilt, and from which reference patches it
tried.</p>"""
RESULTS_HELP = (
    "Heat maps use a **fixed colour scale calibrated on your references** (leave-one-out), so "
    "a normal query stays blue. **Click any patch** of these images to explain it below."
)
WHY_MD = (
    "#### Why this patch?\nReconstruction error of every feature dimension of the selected "
    "patch, grouped by backbone stage; grey: what normal patches reach (99th percentile). "
    "Hover over a dimension for its numbers."
)
SOURCES_MD = (
    "#### Which reference patches rebuilt it\nThe selected query patch, then the normal "
    "patches whose weighted combination mimics it (weights sum to 1)."
)
FOOTER = (
    "**How it works.** Each patch feature of the query is rebuilt as a sparse, affine "
    "combination of its nearest normal patch features that lie as far from their image's edge "
    "(self-expressive subspaces). Its score is its distance to the closest normal patch, "
    "discounted by how much of that difference the normal subspace explains: new combinations "
    "of normal variation are discounted, what cannot be rebuilt counts in full. The baseline "
    "(PatchCore-style) is that distance alone. The fit runs once per set of references and "
    "backbone and is reused for every further query. "
    "Ball screw images: BSData, Schlagenhauf et al. 2021, CC BY-SA 4.0."
)


def friendly(fn):
    """Visitor-facing errors only: bad input keeps the page as it was and says what to do."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ss.Stopped:
            raise gr.Error(
                "The app is restarting: please try again in a minute.", print_exception=False
            ) from None
        except ClientGone:
            log.info("%s stopped: its client has gone", fn.__name__)
            raise gr.Error("The request was abandoned.", print_exception=False) from None
        except (ImageError, ValueError, ServerFull) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # a bug or a resource problem: log it, never show a trace
            log.exception("%s failed", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(err).__name__}); please try again.",
                print_exception=False,
            ) from None

    return wrapper


class ClientGone(Exception):
    """The client that asked for this work has disconnected: nobody waits for its result."""


def _client_gone() -> bool:
    """Whether the event being handled in this thread has lost its client. gradio marks a
    running event dead when its client's stream closes; a worker thread only sees it here."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:  # called outside a served event (tests, scripts)
        return False
    for job in list(queue.active_jobs):
        for event in job or ():
            if event._id == event_id:
                return not event.alive
    return False


def _watched(progress):
    """``progress`` as a fit's step callback that stops the work once its client has gone."""

    def step(fraction: float, message: str) -> None:
        if _client_gone():
            raise ClientGone
        progress(fraction, desc=message)

    return step


def _file_name(payload) -> str:
    """The name a client gave its file, for messages only."""
    name = getattr(payload, "orig_name", None) or Path(str(getattr(payload, "path", ""))).name
    return name[:80] or "the upload"


class QueryImage(gr.Image):
    """``gr.Image`` that hands the uploaded file to the handler as it is. gradio's own
    preprocess decodes and re-saves every image that is not 8-bit RGB before any handler runs:
    16-bit data clipped, transparency dropped onto black, and a few-KB PNG of 80 megapixels
    decoded in full before the loader's pixel limit could refuse it from its header.
    Only files gradio received for this app are read (:func:`subspace.uploads.read_bytes`);
    a base64 payload's size is checked before it is decoded."""

    is_template = True  # same front-end component as gr.Image

    def preprocess(self, payload):
        if payload is None:
            return None
        label = f"query {_file_name(payload)!r}"
        try:
            if payload.url and payload.url.startswith("data:"):  # base64 from an API client
                data = uploads.data_url_bytes(payload.url, label)
                path = processing_utils.save_bytes_to_cache(
                    data, _file_name(payload), self.GRADIO_CACHE
                )
            else:
                path = payload.path
            uploads.check_upload(path, label)  # the header only: nothing is decoded
        except ImageError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            raise gr.Error(uploads.unreadable(label), print_exception=False) from None
        return path


class ThresholdSlider(gr.Slider):
    """``gr.Slider`` that leaves its range to the handler: gradio's own preprocess refuses a
    typed value outside the range with an error while the number box keeps showing it, and
    knows the range only while gradio keeps the visitor's page state. :func:`set_threshold`
    clamps into the result's own range and shows the value it used. The range is each
    result's own, so the API docs describe the scale rather than the page's first one, and
    there is no default: the value before any run means nothing."""

    is_template = True  # same front-end component as gr.Slider

    def api_info(self) -> dict:
        return {
            "type": "number",
            "description": "mask threshold on the last result's SGFR error scale: /detect returns "
            "its calibrated value as scores['threshold'] and the range as the slider's minimum "
            "and maximum; a value outside the range is clamped into it",
        }

    def postprocess(self, value):
        return None if value is None else super().postprocess(value)

    def preprocess(self, payload):
        if payload is None:
            raise gr.Error(
                "The threshold is missing: give a number on the result's error scale "
                "(/detect returns its calibrated value as scores['threshold']).",
                print_exception=False,
            )
        try:
            return float(payload)
        except (TypeError, ValueError):
            raise gr.Error(
                f"The threshold must be a number, got {str(payload)[:40]!r}.",
                print_exception=False,
            ) from None


class ReferenceFiles(gr.File):
    """``gr.File`` that passes the uploaded paths on. gradio's own preprocess leaves an empty
    temporary file in its cache per file and per event, which nothing ever deletes; and the
    loader names a non-image more precisely than gradio's file-type check. The handlers read
    only files gradio received for this app (:func:`subspace.uploads.read_bytes`)."""

    is_template = True  # same front-end component as gr.File

    def preprocess(self, payload):
        if payload is None:
            return None
        return [f.path for f in (payload.root if isinstance(payload, ListFiles) else [payload])]


class ResultImage(gr.Image):
    """``gr.Image`` for rendered results, sent as JPEG (:func:`subspace.viz.jpeg`) instead of
    gradio's WebP: about 1 ms per image instead of 25 on every run, click and threshold move."""

    is_template = True  # same front-end component as gr.Image

    def postprocess(self, value):
        if not isinstance(value, Image.Image):
            return super().postprocess(value)
        name = f"{(self.elem_id or 'result').removeprefix('out-')}.jpg"
        path = processing_utils.save_bytes_to_cache(viz.jpeg(value), name, self.GRADIO_CACHE)
        return ImageData(path=path, orig_name=name)


def _session(state, request: gr.Request | None = None) -> ss.Session:
    """This visitor's session: the page's state, or the one kept under its session id when
    gradio has dropped the state (:mod:`subspace.store`), or a new one. Any call marks the
    kept session as in use, so an active visitor is never dropped as idle."""
    kept = ss.STORE.get(getattr(request, "session_hash", None))
    if isinstance(state, ss.Session):
        return state
    return kept or ss.Session()


def _keep(session: ss.Session, request: gr.Request | None) -> None:
    """Account for what ``session`` now holds and keep it under the visitor's session id
    (a call from outside a served event has none: its caller keeps the session)."""
    session.account()
    if key := getattr(request, "session_hash", None):
        ss.STORE.put(key, session)


def _result(state, request: gr.Request | None, then: str) -> ss.Session:
    """The session, if it holds a result; else a message saying what to do (gr.Error)."""
    session = _session(state, request)
    if session.result is not None:
        return session
    if session.evicted:
        raise gr.Error(
            "Your results were cleared to make room for other visitors: run the detector again.",
            print_exception=False,
        )
    raise gr.Error(f"Run the detector first, then {then}.", print_exception=False)


# --------------------------------------------------------------------------- handlers
@friendly
def preview_references(files: list[str] | None) -> list[tuple]:
    """Thumbnails of the uploaded references; warns about unusable files and the limit."""
    thumbs, problems = uploads.reference_previews(files or [])
    if problems:
        gr.Warning(" ".join(problems))
    return thumbs


class Superseded(Exception):
    """The visitor changed the references, the backbone or the share during a fit ahead."""


def _wish(refs, backbone, ratio) -> tuple:
    """What a fit ahead of the run is for: the inputs as the visitor set them."""
    return tuple(refs or ()), backbone, float(ratio)


def want_fit(refs, backbone, ratio, state, request: gr.Request = None) -> ss.Session:
    """Note at once, outside the model's queue slot, which fit the visitor wants now: a fit
    ahead for earlier inputs then stops at its next step instead of holding the slot (shared
    by every visitor) to its end, and one still queued does not start."""
    session = _session(state, request)
    session.wanted = _wish(refs, backbone, ratio)
    return session


def prefit(refs, backbone, ratio, state, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
    """Fit the references as soon as they are in, while the visitor picks a query: the first
    run then only predicts. Quiet on failure: the run says what is wrong, with the same checks.
    Yields (note, session): first that the fit is under way, then what is ready; nothing new
    for the note if the visitor has changed the inputs since (:func:`want_fit`)."""
    session = _session(state, request)
    wish = _wish(refs, backbone, ratio)
    watched = _watched(progress)

    def superseded() -> bool:
        return session.wanted not in (None, wish)  # None: nothing noted yet

    def step(fraction: float, message: str) -> None:
        if superseded():
            raise Superseded
        watched(fraction, message)

    if superseded():
        yield gr.skip(), session
        return
    if not refs:
        yield "", session
        return
    try:
        ref_files, digest = uploads.read_references(refs)
        name, swap = ss.choose_backbone(backbone, STATUS)  # said in the note, not a pop-up
        yield "Fitting the references…", session
        name, failed = ss.load_or_fallback(name)
        swap = swap or failed
        with ss.model_work():
            fit, _ = session.fit(ref_files, digest, name, float(ratio), step)
        _keep(session, request)
    except Superseded:
        log.info("a fit ahead of the run stopped: the visitor changed its inputs")
        yield gr.skip(), session
        return
    except ClientGone:
        log.info("a fit ahead of the run stopped: its client has gone")
        yield gr.skip(), session
        return
    except (ImageError, ValueError, ss.Stopped, ServerFull):
        yield "", session
        return
    except Exception:  # never a pop-up for work the visitor did not ask for
        log.exception("fitting the references ahead of the run failed")
        yield "", session
        return
    n, det = len(ref_files), fit.detector
    yield (
        f"**Ready:** {PRESETS[name].label} fitted on {n} reference{'s' * (n > 1)}, "
        f"{det.config.ratio:.0%} of the bank kept, in {det.fit_seconds:.1f} s; "
        "a run now only predicts." + (f" {swap}" if swap else ""),
        session,
    )


@friendly
def load_example(name: str):
    """Fill the references and the query from example set ``name``."""
    ex = EXAMPLES[name]
    query = next((q for q in ex.query if q.stem in ex.masks), ex.query[0])
    picks = [(str(q), "defect" if q.stem in ex.masks else "good") for q in ex.query]
    return (
        [str(p) for p in ex.normal],
        str(query),
        gr.Gallery(
            value=picks,
            visible=True,
            columns=len(picks),
            label="More queries from this set: click to run",
        ),
        [str(q) for q in ex.query],
    )


def _event_index(evt: gr.EventData | None):
    """The ``index`` of a select event's data, as the client sent it (anything, or None).
    Read from the raw data: gr.SelectData fails on malformed data before any handler runs."""
    data = getattr(evt, "_data", None)
    return data.get("index") if isinstance(data, dict) else None


@friendly
def pick_query(paths: list[str], evt: gr.EventData = None) -> str:
    """A click on an example query puts it in the query box (the run follows)."""
    index = _event_index(evt)
    if type(index) is not int or not 0 <= index < len(paths or ()):
        raise ValueError("Pick one of the example queries shown (load an example set first).")
    return paths[index]


def query_uploaded(query) -> None:
    """Nothing to do here: :class:`QueryImage` checks each upload's header as it comes in,
    so an unusable file is named at once, not at the next run."""


@friendly
def check_run(refs, query, state, request: gr.Request = None) -> ss.Session:
    """A run's input checks, as an event of their own before it: a bad input is named (every
    bad reference at once) while the results on the page stay as they are, where a failed run
    would mark each of them as an error. Reference sets that passed before are not decoded
    again; the query's decoded image is not kept (the run reads it again), so that a check
    holds no memory outside the session's budget."""
    session = _session(state, request)
    _query_image(query)
    ref_files, digest = uploads.read_references(refs or [])
    if digest not in session.checked:
        uploads.check_references(ref_files)
        if len(session.checked) >= ss.CHECKED_SETS:
            session.checked.clear()
        session.checked.add(digest)
    return session


def _query_image(query: str | None) -> tuple[bytes, Image.Image]:
    """The query's (bytes, RGB image)."""
    if not query:
        raise ValueError("Add a query image to inspect (or load an example set).")
    return uploads.read_image(query, f"query {Path(query).name!r}")


@friendly
def detect(refs, query, backbone, ratio, state, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
    """Fit on the references (reused when unchanged) and localise anomalies in the query.

    Parameters:
        refs: 1 to 16 defect-free reference images of the part.
        query: the image to inspect.
        backbone: the feature extractor ("auto" picks the best one available).
        ratio: share of the reference patches kept in the memory bank (0.05 to 1).
    """
    session = _session(state, request)
    data, image = _query_image(query)
    name, warning = ss.choose_backbone(backbone, STATUS)
    ref_files, digest = uploads.read_references(refs or [])
    progress(0.0, desc="loading the backbone")
    name, failed = ss.load_or_fallback(name)
    for message in filter(None, (warning, failed)):
        gr.Warning(message)
    watched = _watched(progress)
    with ss.model_work():  # a shutdown waits for it (torch at exit would abort the process)
        fit, reused = session.fit(
            ref_files, digest, name, float(ratio), lambda f, m: watched(0.05 + 0.9 * f, m)
        )
        watched(0.97, "scoring the query")
        pred = fit.detector.predict(image)
    truth = TRUTH.lookup(data, image.size)
    session.result = rs.make_result(pred, fit, Path(query).name, image, truth, reused)
    session.evicted = False
    _keep(session, request)
    return (*_views(session), *_explain(session), *_numbers(session, slider=True), session)


def _views(session: ss.Session):
    v = rs.views(session.result)
    return v["query"], v["sgfr"], v["knn"], v["mask"], v["sgfr_bar"], v["knn_bar"]


def _explain(session: ss.Session):
    res = session.result
    return rs.patch_note(res), rs.dimension_plot(res), rs.thumbnails(res)


def _numbers(session: ss.Session, slider: bool = False):
    res = session.result
    out = []
    if slider:  # a new result: range from its calibration (this rounds its threshold)
        lo, hi, step = rs.threshold_range(res)
        out.append(gr.Slider(minimum=lo, maximum=hi, value=res.threshold, step=step, visible=True))
    numbers = rs.scores(res, res.threshold)
    return (*out, rs.summary(numbers), numbers)


@friendly
def export(state, request: gr.Request = None):
    """Write the results bundle (zip) of the last result at the current threshold. Written
    when asked for, so that it always holds what the page shows."""
    session = _result(state, request, "download its results")
    res = session.result
    return str(rs.bundle(res, rs.scores(res, res.threshold), session.folder))


@friendly
def inspect(x: float, y: float, state, request: gr.Request = None):
    """Explain the patch at query pixel (x, y): per-dimension errors and its sources.

    Parameters:
        x: column of the patch, in pixels of the query as uploaded.
        y: row of the patch, in pixels of the query as uploaded.
    """
    session = _result(state, request, "click a patch")
    x = uploads.finite(x, "The patch's x coordinate")
    y = uploads.finite(y, "The patch's y coordinate")
    session.result.patch = session.result.pred.patch_at(x, y)
    v = rs.views(session.result)
    numbers = rs.scores(session.result, session.result.threshold)
    return (v["query"], v["sgfr"], v["knn"], v["mask"], *_explain(session), numbers, session)


@friendly
def select_patch(state, evt: gr.EventData = None, request: gr.Request = None):
    """A click on any result image: the event's index is (x, y) in that image's pixels."""
    session = _result(state, request, "click a patch")
    index = _event_index(evt)
    if not isinstance(index, list | tuple) or len(index) != 2:
        raise ValueError("Click a point of a result image to explain its patch.")
    x = uploads.finite(index[0], "The clicked point's x coordinate")
    y = uploads.finite(index[1], "The clicked point's y coordinate")
    res = session.result
    sx = res.query.size[0] / res.display.size[0]
    sy = res.query.size[1] / res.display.size[1]
    return inspect(x * sx, y * sy, session, request)


@friendly
def set_threshold(threshold: float, state, request: gr.Request = None):
    """Redraw the mask and the defect area for a new threshold; no refit, no re-prediction.

    Parameters:
        threshold: on the last result's SGFR error scale, clamped into its range.
    """
    session = _result(state, request, "set the mask threshold")
    wanted = uploads.finite(threshold, "The threshold")
    lo, hi = rs.threshold_bounds(session.result)
    session.result.threshold = min(max(wanted, lo), hi)
    moved = session.result.threshold != wanted  # the page then shows the value used
    shown = gr.Slider(value=session.result.threshold) if moved else gr.skip()
    mask = rs.views(session.result, only_mask=True)["mask"]
    return mask, *_numbers(session), shown, session


# --------------------------------------------------------------------------- layout
with gr.Blocks(
    title="Subspace anomaly localisation", fill_width=True, delete_cache=(SWEEP_EVERY_S, UNUSED_S)
) as demo:
    state = gr.State(None, time_to_live=ss.SESSION_TTL_S, delete_callback=ss.close_session)
    example_paths = gr.State([])
    gr.HTML(HEADER, elem_id="header", js_on_load=None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            refs_in = ReferenceFiles(
                label=f"1 · Normal reference images (1–{uploads.MAX_REFERENCES}, defect-free)",
                file_count="multiple", file_types=["image"], height=150, elem_id="refs",
            )  # fmt: skip
            refs_gallery = gr.Gallery(
                columns=8, height=124, object_fit="cover", allow_preview=False,
                show_label=False, elem_id="refs-gallery",
            )  # fmt: skip
            fit_note = gr.Markdown("", elem_id="fit-note", elem_classes="help")
        with gr.Column(scale=3, min_width=240):
            query_in = QueryImage(
                label="2 · Query to inspect", type="filepath",
                sources=["upload", "clipboard"], height=170, elem_id="query",
            )  # fmt: skip
            example_gallery = gr.Gallery(
                visible=False, columns=4, height=124, object_fit="cover", allow_preview=False,
                elem_id="example-queries",
            )  # fmt: skip
        with gr.Column(scale=3, min_width=260, elem_id="controls"):
            gr.Markdown("**No images at hand?** Load an example set:", elem_classes="help")
            example_buttons = {
                name: gr.Button(ex.title, size="md", elem_id=f"example-{name}")
                for name, ex in EXAMPLES.items()
            }
            backbone_in = gr.Dropdown(
                CHOICES, value=DEFAULT_BACKBONE, label="3 · Backbone", elem_id="backbone"
            )
            if note := ss.hub_note(STATUS):
                gr.Markdown(note, elem_classes="hub-note")
            ratio_in = gr.Slider(
                0.05, 1.0, value=ss.RATIO_DEFAULT, step=0.05, label="Memory bank kept",
                info="share of reference patches kept by usage sampling", elem_id="ratio",
            )  # fmt: skip
            run_btn = gr.Button("Detect anomalies", variant="primary", size="lg", elem_id="run")

    gr.Markdown(RESULTS_HELP, elem_classes="help")
    # Pairs that stay together: the query beside its SGFR map, the baseline beside the mask.
    # Four across on a wide screen, two by two on a narrow one, one column on a phone.
    with gr.Row(equal_height=False, elem_id="results"):
        image_args = dict(
            type="pil",
            interactive=False,
            show_label=False,
            buttons=["fullscreen"],
            min_width=RESULT_MIN_WIDTH,
        )
        html_args = dict(show_label=False, js_on_load=None, elem_classes="bar")
        with gr.Column(min_width=PAIR_MIN_WIDTH), gr.Row(equal_height=False):
            with gr.Column(min_width=RESULT_MIN_WIDTH):
                gr.Markdown("**Query** · click any patch", elem_classes="imgtitle")
                query_out = ResultImage(label="Query", elem_id="out-query", **image_args)
                patch_note = gr.HTML(label="Selected patch", **html_args, elem_id="patch-note")
            with gr.Column(min_width=RESULT_MIN_WIDTH):
                gr.Markdown("**SGFR (ours)** · subspace-guided", elem_classes="imgtitle")
                sgfr_out = ResultImage(label="SGFR heat map", elem_id="out-sgfr", **image_args)
                sgfr_bar = gr.HTML(label="SGFR colour scale", **html_args)
        with gr.Column(min_width=PAIR_MIN_WIDTH), gr.Row(equal_height=False):
            with gr.Column(min_width=RESULT_MIN_WIDTH):
                gr.Markdown("**Baseline** · nearest neighbour", elem_classes="imgtitle")
                knn_out = ResultImage(label="Baseline heat map", elem_id="out-knn", **image_args)
                knn_bar = gr.HTML(label="Baseline colour scale", **html_args)
            with gr.Column(min_width=RESULT_MIN_WIDTH):
                gr.Markdown("**Defect mask** · green: ground truth", elem_classes="imgtitle")
                mask_out = ResultImage(label="Defect mask", elem_id="out-mask", **image_args)
                threshold_in = ThresholdSlider(  # shown with the first result, on its scale
                    0, 1, value=None, label="Mask threshold", elem_id="threshold",
                    buttons=[], visible=False,
                )  # fmt: skip
    summary_out = gr.HTML(label="Summary", show_label=False, js_on_load=None, elem_id="summary")
    with gr.Row(equal_height=False):  # stacked below about 1100 px: the chart's text stays legible
        with gr.Column(scale=3, min_width=720):
            gr.Markdown(WHY_MD, elem_classes="section")
            chart_out = gr.HTML(
                label="Per-dimension error", show_label=False, js_on_load=None, elem_id="dims"
            )
        with gr.Column(scale=2, min_width=320):
            gr.Markdown(SOURCES_MD, elem_classes="section")
            sources_out = gr.Gallery(
                label="Reference patches", columns=4, object_fit="contain",
                allow_preview=False, show_label=False, elem_id="sources",
            )  # fmt: skip
    with gr.Row(equal_height=False):
        bundle_btn = gr.Button(
            "Download results (.zip): heat maps, overlays, raw maps, mask, scores",
            elem_id="bundle", scale=1, variant="secondary",
        )  # fmt: skip
        # The zip is written on a click and handed to this hidden button, which downloads it.
        bundle_out = gr.DownloadButton(elem_id="bundle-file", elem_classes="offscreen")
        with gr.Column(scale=1), gr.Accordion("Scores as JSON (what the API returns)", open=False):
            scores_out = gr.JSON(label="Scores", show_label=False, elem_id="scores")
    gr.Markdown(FOOTER, elem_classes="help")
    x_in = gr.Number(visible=False)
    y_in = gr.Number(visible=False)
    inspect_btn = gr.Button(visible=False)

    # ----------------------------------------------------------------------- events
    images = [query_out, sgfr_out, knn_out, mask_out]
    explain = [patch_note, chart_out, sources_out]
    numbers = [summary_out, scores_out]
    light = dict(concurrency_id="explain", concurrency_limit=2)  # no model: may overlap
    heavy = dict(concurrency_id="model", show_progress_on=images)  # one fit/predict at a time
    ahead = dict(  # fit the references while the visitor picks a query
        fn=prefit,
        inputs=[refs_in, backbone_in, ratio_in, state],
        outputs=[fit_note, state],
        api_visibility="private",
        concurrency_id="model",
        show_progress_on=[refs_gallery],
        show_progress="minimal",
        trigger_mode="always_last",
    )
    wish = dict(  # noted at once, so that a fit ahead for earlier inputs stops
        fn=want_fit,
        inputs=[refs_in, backbone_in, ratio_in, state],
        outputs=state,
        api_visibility="private",
        concurrency_id="wish",
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="always_last",
    )
    refs_in.change(
        preview_references, refs_in, refs_gallery, api_name="preview_references"
    ).success(**wish).success(**ahead)
    backbone_in.change(**wish).success(**ahead)
    ratio_in.release(**wish).success(**ahead)
    for name, btn in example_buttons.items():
        btn.click(
            functools.partial(load_example, name),
            None,
            [refs_in, query_in, example_gallery, example_paths],
            api_name=f"example_{name}",
        )
    run_inputs = [refs_in, query_in, backbone_in, ratio_in, state]
    run_outputs = [*images, sgfr_bar, knn_bar, *explain, threshold_in, *numbers, state]
    query_in.upload(
        query_uploaded, query_in, None, api_visibility="private", show_progress="hidden", **light
    )
    run_btn.click(
        check_run, [refs_in, query_in, state], state, api_visibility="private", **light
    ).success(detect, run_inputs, run_outputs, api_name="detect", **heavy)
    example_gallery.select(
        pick_query, example_paths, query_in, api_name="pick_query", api_visibility="undocumented"
    ).success(detect, run_inputs, run_outputs, api_visibility="private", **heavy)
    bundle_btn.click(
        export, state, bundle_out, api_name="bundle", show_progress="hidden", **light
    ).success(None, js="() => document.querySelector('#bundle-file')?.click()")
    click_outputs = [*images, *explain, scores_out, state]
    for img in images:
        img.select(
            select_patch,
            state,
            click_outputs,
            api_name=f"select_{img.elem_id.removeprefix('out-')}",
            api_visibility="undocumented",  # needs a click position: use /inspect instead
            show_progress="minimal",
            **light,
        )
    inspect_btn.click(inspect, [x_in, y_in, state], click_outputs, api_name="inspect", **light)
    threshold_in.input(
        set_threshold,
        [threshold_in, state],
        [mask_out, *numbers, threshold_in, state],
        api_name="threshold",
        trigger_mode="always_last",
        show_progress="hidden",
        **light,
    )

demo.queue(default_concurrency_limit=1, max_size=24)


def _exit_on_sigterm(*_) -> None:
    """A normal exit once the model work under way has stopped; further SIGTERMs (a supervisor
    and ``timeout`` both sending one) are ignored, so that they cannot cut the cleanup short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ss.stop_model_work()
    sys.exit(0)


def launch_kwargs() -> dict:
    """Local by default; Spaces set GRADIO_SERVER_NAME. Uploads are bounded like the loader."""
    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_FILE_BYTES,
        show_error=True,  # API callers see why a call was refused (wrong type, missing value)
        state_session_capacity=ss.MAX_SESSIONS,  # gradio's per-session page states
        # A call's JSON is bounded (files come through the upload route): gradio keeps each
        # call's values in the session's page state.
        app_kwargs={"middleware": [Middleware(BodyLimit)]},
        theme=THEME,
        css=widgets.CSS,
        footer_links=["api", "gradio"],
    )


def _end_with_parent() -> None:
    """Under ``gradio app.py`` (reload mode) the server runs as a child of gradio's command,
    which exits on Ctrl-C or SIGTERM without stopping it: have the kernel send this process
    SIGTERM when its parent dies (Linux; elsewhere the child outlives it as before)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("stop this server yourself when gradio's reload command ends")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if note := ss.hub_note(STATUS):  # said on the page too
        log.warning(note.replace("**", ""))
    os.chdir(ROOT)  # gradio serves returned example files only from the working directory
    ss.tune_allocator()  # before the worker threads: keeps RSS flat over many runs
    # SIGTERM (Spaces, CI) ends it through a normal interpreter exit rather than a kill, so
    # the temp folder is removed on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if os.environ.get("GRADIO_WATCH_DEMO_PATH"):
        _end_with_parent()
    scratch.start_sweeper(TEMP, UNUSED_S, SWEEP_EVERY_S, ss._STOP)
    # The example sets are fitted once, in the background, for every visitor: a first click
    # on an example then answers as fast as a further query.
    sets = [uploads.read_references([str(p) for p in ex.normal]) for ex in EXAMPLES.values()]
    backbone = ss.choose_backbone(DEFAULT_BACKBONE, STATUS)[0]
    ss.warm_up(backbone, after=lambda: demo.is_running, prepare=sets)
    demo.launch(**launch_kwargs())


# gradio's reload mode runs this file again in a watcher thread on every change: only the
# first run, in the main thread, starts the server.
if __name__ == "__main__" and threading.current_thread() is threading.main_thread():
    main()
