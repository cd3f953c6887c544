"""Per-visitor state of the app: fits reused by reference content and the last result.

The app keeps one :class:`Session` per browser tab in a ``gr.State``; nothing here is shared
between visitors except what is read-only: the backbones (one per preset, loaded once per
process) and the fits of the example sets, prepared once at start-up (:func:`warm_up`), so
that a visitor's first click on an example answers as fast as a further query.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from . import store, viz
from .data import load_image
from .presets import DEFAULT_HUB, FALLBACK, PRESETS
from .uploads import Upload

if TYPE_CHECKING:  # torch and timm load on first use: the app's page is up seconds sooner
    from .backbone import Backbone
    from .detector import Detector
    from .result import Result

log = logging.getLogger(__name__)

FITS_PER_SESSION = 2  # fitted detectors kept per visitor (e.g. to switch backbones back)
CHECKED_SETS = 8  # digests of reference sets known to decode, per visitor
SESSION_TTL_S = 1800  # a visitor's state is dropped after this long without activity
# gradio's own per-session table (each visitor's page state, with the values of its calls, each
# call's JSON at most bodylimit.MAX_BODY_BYTES): a full table drops its least recently used
# entry, which the app then finds in STORE by session id if it held a fit or a result.
MAX_SESSIONS = int(store.env_number("SUBSPACE_GRADIO_SESSIONS", 256))
STORE = store.SessionStore(ttl_s=SESSION_TTL_S)  # sessions holding fits or results, by id
# Bytes a new fit and its result are reserved before the fit (STORE.make_room): about what a fit
# of MAX_REFERENCES references at the loader's largest size and its result hold (store.footprint;
# README, Limits).
FIT_RESERVE_BYTES = 80 * store.MB
# The library's defaults (Config.ratio, Config.sampling), written out: detector imports torch
RATIO_DEFAULT = 0.25  # share of the bank kept by usage sampling
SAMPLING = "usage"

_BACKBONES: dict[str, Backbone] = {}
_BACKBONE_LOCK = threading.Lock()
_PREPARED: dict[str, Fit] = {}  # fit key -> fit shared by every visitor (the example sets)
_PREPARING: dict[str, threading.Event] = {}  # fit key -> set once its preparation has ended
PREPARE_WAIT_S = 60.0  # a visitor waits at most this long for a fit being prepared
_STOP = threading.Event()  # set on shutdown: model work stops at its next step
_BACKGROUND: list[threading.Thread] = []  # the warm-up threads, joined on shutdown
_WORK = threading.Condition()  # guards _ACTIVE
_ACTIVE = 0  # requests fitting or scoring right now


class Stopped(Exception):
    """Raised in model work once :func:`stop_model_work` was called (the app shuts down)."""


def _stop_point(*_) -> None:
    """A progress callback that ends model work at its next step after a shutdown."""
    if _STOP.is_set():
        raise Stopped


def _stoppable(progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
    """``progress``, ending the work at its next step once the app shuts down."""

    def say(fraction: float, message: str) -> None:
        _stop_point()
        if progress is not None:
            progress(fraction, message)

    return say


@contextlib.contextmanager
def model_work():
    """Marks a request's fitting and scoring, so that a shutdown waits for it to end; once the
    shutdown has begun, new work is refused (:class:`Stopped`)."""
    global _ACTIVE
    with _WORK:
        _stop_point()
        _ACTIVE += 1
    try:
        yield
    finally:
        with _WORK:
            _ACTIVE -= 1
            _WORK.notify_all()


def stop_model_work(timeout: float = 10.0) -> None:
    """Stop the warm-up, the example fits and the requests' fits at their next step, and wait
    for them and for any scoring under way (at most ``timeout`` seconds in all).

    Call it before the interpreter exits: torch still computing in another thread while the
    process shuts down aborts it ("terminate called without an active exception").
    """
    _STOP.set()
    deadline = time.monotonic() + timeout
    for thread in _BACKGROUND:
        thread.join(max(0.0, deadline - time.monotonic()))
    with _WORK:
        _WORK.wait_for(lambda: _ACTIVE == 0, max(0.0, deadline - time.monotonic()))


def get_backbone(name: str) -> Backbone:
    """The shared, read-only backbone of preset ``name``, loaded once per process."""
    from .backbone import load_backbone

    with _BACKBONE_LOCK:
        if name not in _BACKBONES:
            _BACKBONES[name] = load_backbone(name)
        return _BACKBONES[name]


# ----------------------------------------------------------------------------- backbones
def auto_backbone(status: dict[str, str]) -> str:
    """What ``auto`` means given :func:`subspace.backbone.availability` output."""
    return DEFAULT_HUB if status.get(DEFAULT_HUB) in ("cached", "hub") else FALLBACK


SOURCES = {"bundled": "offline", "cached": "cached", "hub": "Hub"}  # availability -> tag


def backbone_choices(status: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs for the backbone dropdown, each saying where its weights come from
    or why it cannot be used; short, as the dropdown is narrow."""

    def tag(name: str) -> str:
        st = status.get(name, "unavailable")
        return SOURCES.get(st, "Hub unreachable" if "unreachable" in st else st)

    auto = auto_backbone(status)
    out = [(f"auto: {PRESETS[auto].label} ({tag(auto)})", "auto")]
    out += [(f"{preset.label} ({tag(name)})", name) for name, preset in PRESETS.items()]
    return out


def hub_note(status: dict[str, str]) -> str:
    """One line for the UI about the Hub, empty when every Hub backbone is usable."""
    down = [n for n, s in status.items() if s.startswith("unavailable")]
    if not down:
        return ""
    return (
        "The Hugging Face Hub is unreachable, so the Hub backbones are unavailable; "
        f"the app uses **{PRESETS[FALLBACK].label}**, whose ImageNet weights install with it."
    )


def choose_backbone(choice: str, status: dict[str, str]) -> tuple[str, str | None]:
    """Dropdown value -> (preset to use, warning for the visitor or None)."""
    name = auto_backbone(status) if choice in (None, "", "auto") else choice
    if name not in PRESETS:
        raise ValueError(f"Unknown backbone {choice!r}: pick one from the list.")
    if status.get(name, "").startswith("unavailable"):
        return FALLBACK, (
            f"{PRESETS[name].label} needs the Hugging Face Hub, which is unreachable: "
            f"using {PRESETS[FALLBACK].label} instead."
        )
    return name, None


def load_or_fallback(name: str) -> tuple[str, str | None]:
    """Load preset ``name`` (once per process); if its weights cannot be had after all, load
    the bundled one. Returns (preset loaded, warning for the visitor or None)."""
    try:
        get_backbone(name)
        return name, None
    except RuntimeError as err:
        if name == FALLBACK:
            raise
        log.warning("backbone %s failed, falling back to %s: %s", name, FALLBACK, err)
        get_backbone(FALLBACK)
        return FALLBACK, (
            f"{PRESETS[name].label} could not be loaded: using {PRESETS[FALLBACK].label} instead."
        )


# ----------------------------------------------------------------------------- state
@dataclass
class Fit:
    """A fitted detector and what the app needs to explain it."""

    key: str
    detector: Detector
    refs: list[Image.Image]  # display-size copies, for reference-patch thumbnails
    scales: list[float]  # display px per original px, per reference


@dataclass
class Session:
    """Everything one visitor has computed. Dropped (and its memory freed) on expiry."""

    fits: OrderedDict[str, Fit] = field(default_factory=OrderedDict)
    result: Result | None = None
    wanted: tuple | None = None  # the inputs of the latest fit asked for ahead of the run
    checked: set[str] = field(default_factory=set)  # digests of reference sets that decode
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)  # kept by STORE
    nbytes: int = 0  # what its fits and result hold, as last accounted
    evicted: bool = False  # dropped to make room for other visitors
    folder: Path = field(  # this visitor's result bundles, in the app's temp folder
        default_factory=lambda: (
            Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
            / "bundles"
            / uuid.uuid4().hex
        )
    )

    def __post_init__(self) -> None:
        # Also when gradio drops the state without the delete callback (evicted, shut down).
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    def fit(
        self,
        uploads: Sequence[Upload],
        digest: str,
        backbone: str,
        ratio: float,
        progress: Callable[[float, str], None] | None = None,
    ) -> tuple[Fit, bool]:
        """Fitted detector for these references, backbone and ratio: reused (this visitor's
        own, or one prepared for every visitor) or fitted now."""
        key = fit_key(digest, backbone, ratio)
        fit = self.fits.get(key) or prepared_fit(key, progress)
        reused = fit is not None
        if fit is None:  # room is made once the references decode (ServerFull: refused)
            room = lambda: STORE.make_room(self, FIT_RESERVE_BYTES)  # noqa: E731
            fit = new_fit(uploads, key, backbone, ratio, _stoppable(progress), room)
        self.fits[key] = fit
        self.fits.move_to_end(key)
        while len(self.fits) > FITS_PER_SESSION:
            self.fits.popitem(last=False)
        return fit, reused

    def account(self) -> int:
        """Recount the bytes this session holds (fits shared by every visitor excepted)."""
        shared = [*_PREPARED.values(), *_BACKBONES.values()]
        self.nbytes = store.footprint([self.fits, self.result], shared)
        return self.nbytes

    def close(self, evicted: bool = False) -> None:
        """Drop references to detectors and images so their memory can be returned;
        ``evicted``: to make room for other visitors (the next call says so)."""
        self.fits.clear()
        self.result = None
        self.nbytes = 0
        self.evicted = self.evicted or evicted
        shutil.rmtree(self.folder, ignore_errors=True)


def fit_key(digest: str, backbone: str, ratio: float) -> str:
    """What identifies a fit: the references' content, the backbone and the share kept."""
    return f"{digest}:{backbone}:{ratio:.4f}"


def new_fit(
    uploads: Sequence[Upload],
    key: str,
    backbone: str,
    ratio: float,
    progress: Callable[[float, str], None] | None = None,
    room: Callable[[], None] | None = None,
) -> Fit:
    """Fit a detector on the uploaded references (ImageError if one is unusable); ``room`` is
    called once they decode and the settings are valid, before any model work."""
    from .detector import Config, Detector

    refs = []
    for u in uploads:
        (progress or _stop_point)(0.0, "reading the references")  # stops once asked to
        refs.append(load_image(u.data, name=u.label))
    config = Config(backbone=backbone, ratio=ratio, sampling=SAMPLING)
    if room is not None:
        room()
    det = Detector(config, backbone=get_backbone(backbone)).fit(refs, progress=progress)
    shown = [viz.to_display(im) for im in refs]
    return Fit(key, det, shown, [s.size[0] / im.size[0] for s, im in zip(shown, refs, strict=True)])


def prepared_fit(
    key: str, progress: Callable[[float, str], None] | None = None, wait_s: float | None = None
) -> Fit | None:
    """The fit prepared for every visitor under ``key``, waiting while it is being prepared;
    None if there is none (or its preparation failed or takes too long)."""
    pending = _PREPARING.get(key)
    if pending is not None and not pending.is_set():
        if progress is not None:
            progress(0.5, "preparing this example set")
        pending.wait(PREPARE_WAIT_S if wait_s is None else wait_s)
    return _PREPARED.get(key)


def prepare_fits(
    sets: Sequence[tuple[Sequence[Upload], str]], backbone: str, ratio: float = RATIO_DEFAULT
) -> Callable[[], int]:
    """Announce fits of reference ``sets`` ((uploads, digest) each) for every visitor; returns
    the function that fits them one after the other and says how many are ready. Visitors
    asking for an announced fit wait for it (:func:`prepared_fit`) instead of fitting the same
    references beside it."""
    keys = [fit_key(digest, backbone, ratio) for _, digest in sets]
    for key in keys:
        _PREPARING.setdefault(key, threading.Event())

    def run() -> int:
        try:
            for (uploads, _), key in zip(sets, keys, strict=True):
                try:
                    if key not in _PREPARED:
                        _PREPARED[key] = new_fit(uploads, key, backbone, ratio, _stop_point)
                except Stopped:
                    break
                except Exception as err:  # only an optimisation: visitors then fit it themselves
                    log.warning("preparing a fit of the example set failed: %s", err)
                finally:
                    _PREPARING[key].set()
        finally:  # stopped: nobody waits for what was not prepared
            for key in keys:
                _PREPARING[key].set()
        return sum(key in _PREPARED for key in keys)

    return run


def close_session(session: Session | None) -> None:
    """``gr.State`` delete callback: the visitor's tab has gone (or the state expired)."""
    if isinstance(session, Session):
        STORE.discard(session)
        session.close()


def tune_allocator(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Keep a long-running server's memory flat (glibc only; call once at start-up).

    glibc raises its mmap threshold after the first large free, and then serves image- and
    tensor-sized blocks from per-thread arenas that fragment across gradio's worker threads:
    the server's RSS crept up 18 % over 300 predictions. A fixed threshold returns such
    blocks to the system when freed; two arenas bound the fragmentation. Returns whether set.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
        return bool(
            libc.mallopt(m_mmap_threshold, mmap_threshold) and libc.mallopt(m_arena_max, arenas)
        )
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False


def warm_up(
    backbone: str,
    after: Callable[[], bool] | None = None,
    wait_s: float = 30.0,
    prepare: Sequence[tuple[Sequence[Upload], str]] = (),
) -> threading.Thread:
    """Load ``backbone`` and run a tiny fit + predict in the background (first-call costs),
    then fit the reference sets ``prepare`` ((uploads, digest) each: the example sets) at the
    default share for every visitor (:func:`prepare_fits`).

    ``after``: start once it returns True (polled for at most ``wait_s`` seconds), e.g. once
    the server is up, so the warm-up never delays the first page.
    """
    prepared = prepare_fits(prepare, backbone)  # announced now: nobody fits them twice

    def run() -> None:
        from .detector import Config, Detector
        from .synthetic import texture

        t0 = time.perf_counter()
        while after is not None and not after() and time.perf_counter() - t0 < wait_s:
            if _STOP.wait(0.1):
                break
        try:  # one tiny image: loads the weights and primes torch without hogging the CPU
            _stop_point()
            image = Image.fromarray(texture((64, 64)))
            det = Detector(Config(backbone=backbone, size=64), backbone=get_backbone(backbone))
            det.fit([image], progress=_stop_point).predict(image)
            log.info("warm-up done (%s) in %.1f s", backbone, time.perf_counter() - t0)
        except Stopped:
            pass
        except Exception as err:  # only an optimisation
            log.warning("warm-up failed: %s", err)
        ready = prepared()
        if prepare and not _STOP.is_set():  # failures were logged: count what visitors get
            log.info("%d example fits prepared in %.1f s", ready, time.perf_counter() - t0)

    thread = threading.Thread(target=run, daemon=True, name="warm-up")
    _BACKGROUND.append(thread)
    thread.start()
    return thread
