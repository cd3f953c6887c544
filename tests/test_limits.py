"""The app's bounds on what callers can make it hold or read: sessions in bytes, the temp
folder in age, files in kind and size. Real sessions, fits, files and FIFOs, in-process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from subspace import scratch, store, uploads
from subspace import session as ss
from subspace.data import MAX_FILE_BYTES, ImageError, read_file

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- bytes held
def test_footprint_counts_each_buffer_once_and_skips_shared_parts():
    import torch

    a = np.zeros((100, 100), np.float32)  # 40,000 bytes
    t = torch.zeros(1000)  # 4,000 bytes
    image = Image.new("RGB", (10, 20))  # 600 bytes
    shared = np.zeros(10**6, np.uint8)
    holder = {
        "a": a,
        "view": a[:10],
        "again": [a, (t, t[:5])],
        "img": image,
        "mod": torch.nn.Linear(100, 100),
    }
    assert store.footprint([holder]) == 40_000 + 4_000 + 600
    assert store.footprint([holder, shared], shared=[shared]) == 44_600


def _session(nbytes: int) -> ss.Session:
    s = ss.Session()
    s.nbytes = nbytes
    return s


def test_store_drops_idle_sessions_least_recent_first_to_make_room():
    st = store.SessionStore(budget=100, idle_s=60)
    old, mid, new = _session(40), _session(40), _session(10)
    for key, s in (("old", old), ("mid", mid), ("new", new)):
        st.put(key, s)
    old.last_used -= 120  # idle two minutes
    mid.last_used -= 90
    st.make_room(new, 30)  # 90 + 30 > 100: the oldest idle one goes, and that is enough
    assert "old" not in st and "mid" in st and old.evicted and not mid.evicted
    assert st.get("new") is new and st.used() == 50


def test_store_refuses_rather_than_drop_active_visitors():
    st = store.SessionStore(budget=100, idle_s=60)
    a, b = _session(50), _session(40)
    st.put("a", a)
    st.put("b", b)
    with pytest.raises(store.ServerFull, match="The server is full"):
        st.make_room(_session(0), 30)
    assert "a" in st and "b" in st and not a.evicted  # nothing dropped for a refusal


def test_store_expires_sessions_after_their_time_to_live():
    st = store.SessionStore(budget=100, ttl_s=10)
    s = _session(5)
    st.put("x", s)
    s.last_used -= 11
    assert st.get("x") is None and "x" not in st
    assert s.evicted is False and s.nbytes == 0  # closed: its memory returned


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv(store.BUDGET_ENV, "512")
    assert store.budget_bytes() == 512 * store.MB
    for bad in ("", "lots", "-1", "0", "inf", "nan"):
        monkeypatch.setenv(store.BUDGET_ENV, bad)
        assert store.budget_bytes() == store.BUDGET_DEFAULT_MB * store.MB, bad


def _run(app, refs, query, request, state=None):
    """The page's run through the handler, as the visitor of ``request``; its session."""
    return app.detect(refs, query, "lite0", 0.25, state, request, lambda *a, **k: None)[-1]


@pytest.fixture
def crowded(app_module, monkeypatch):
    """A budget with room for one small fit's reserve and result: (refs, query, the visitor
    holding it, that visitor's request), the visitor idle for just over the idle time."""
    refs, query, _, _ = app_module.load_example("synthetic")
    monkeypatch.setattr(ss, "FIT_RESERVE_BYTES", 10 * store.MB)
    monkeypatch.setattr(ss, "STORE", store.SessionStore(budget=15 * store.MB, idle_s=60))
    first = gr.Request(session_hash="first")
    held = _run(app_module, refs[:1], query, first)
    assert ss.STORE.get("first") is held and held.nbytes > 5 * store.MB
    held.last_used -= 61
    yield refs, query, held, first
    held.close()


def test_a_full_server_refuses_a_new_fit_and_an_evicted_visitor_is_told(app_module, crowded):
    """Through the handlers, with real fits: the budget admits one visitor's fit and result,
    refuses a second visitor's fit while the first is active, and drops the first once idle."""
    refs, query, held, first = crowded
    second = gr.Request(session_hash="second")
    held.last_used += 61  # active a moment ago
    with pytest.raises(gr.Error, match="The server is full"):
        _run(app_module, refs[1:2], query, second)
    held.last_used -= 61  # the first visitor has gone quiet
    other = _run(app_module, refs[1:2], query, second)
    assert other.result is not None and held.evicted and held.result is None
    with pytest.raises(gr.Error, match="cleared to make room for other visitors"):
        app_module.set_threshold(1.0, held, first)
    other.close()


def test_a_visitor_dropped_by_gradio_is_found_by_session_id(app_module, monkeypatch):
    refs, query, _, _ = app_module.load_example("synthetic")
    monkeypatch.setattr(ss, "STORE", store.SessionStore())
    visitor = gr.Request(session_hash="visitor")
    held = _run(app_module, refs[:1], query, visitor)
    mask, summary, scores, shown, session = app_module.set_threshold(30.0, None, visitor)
    assert session is held and scores["n_references"] == 1
    with pytest.raises(gr.Error, match="Run the detector first"):  # another id: nothing
        app_module.set_threshold(30.0, None, gr.Request(session_hash="stranger"))
    assert "stranger" not in ss.STORE  # a caller holding nothing is not kept
    session.close()


# ----------------------------------------------------------------------------- temp folder
def test_sweep_removes_what_is_unused_and_keeps_what_is_in_use(tmp_path):
    old = tmp_path / "a" / "old.png"
    used = tmp_path / "b" / "used.png"
    for p in (old, used):
        p.parent.mkdir()
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    scratch.touch(used)  # read again a moment ago
    fresh = tmp_path / "c"
    fresh.mkdir()  # made a moment ago, about to receive a file
    assert scratch.sweep(tmp_path, max_age_s=3600) == 1
    assert not old.exists() and used.exists() and fresh.is_dir()
    os.utime(old.parent, (time.time() - 7200, time.time() - 7200))  # emptied long ago
    assert scratch.sweep(tmp_path, max_age_s=3600) == 0
    assert not old.parent.exists() and fresh.is_dir() and tmp_path.is_dir()


def test_the_sweeper_runs_until_told_to_stop(tmp_path):
    stale = tmp_path / "stale.bin"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    stop = threading.Event()
    thread = scratch.start_sweeper(tmp_path, max_age_s=60, every_s=0.05, stop=stop)
    deadline = time.monotonic() + 10
    while stale.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert not stale.exists() and not thread.is_alive()


def test_the_app_uses_its_own_temp_folder(app_module):
    assert app_module.TEMP.name.startswith(scratch.PREFIX)
    assert os.environ["GRADIO_TEMP_DIR"] == str(app_module.TEMP)
    blocks = {getattr(b, "elem_id", None): b for b in app_module.demo.blocks.values()}
    assert Path(blocks["query"].GRADIO_CACHE) == app_module.TEMP
    assert ss.Session().folder.is_relative_to(app_module.TEMP)


# ----------------------------------------------------------------------------- files read
def test_reads_are_regular_files_only_and_never_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="not a regular file"):
        read_file(fifo, "pipe.png")  # no writer: a blocking open would wait forever
    with pytest.raises(ImageError, match="not a regular file"):
        read_file("/dev/zero", "zero")
    with pytest.raises(ImageError, match="folder"):
        read_file(tmp_path, "folder")
    assert time.perf_counter() - t0 < 2


def test_a_file_growing_past_the_limit_is_read_no_further(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 10)
    with pytest.raises(ImageError, match="limit"):
        read_file(big, "big.png")


def test_only_received_files_are_read(app_module, upload_dir, tmp_path):
    """Inside the upload folder or the examples: read. Anywhere else, or a link from inside to
    outside: one message whether or not the target exists."""
    inside = upload_dir / "ok.png"
    Image.new("RGB", (32, 32)).save(inside)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(outside)
    (upload_dir / "link.png").symlink_to(outside)
    example = next((ROOT / "examples" / "synthetic" / "normal").glob("*.png"))
    assert uploads.read_bytes(inside, "q") and uploads.read_bytes(example, "q")
    said = set()
    for path in (outside, tmp_path / "missing.png", upload_dir / "link.png", "/etc/passwd", "/"):
        with pytest.raises(ImageError) as info:
            uploads.read_bytes(path, "query 'x.png'")
        said.add(str(info.value))
    assert said == {"query 'x.png': the upload could not be read; please upload it again."}


def test_a_visitors_calls_keep_it_from_being_dropped_as_idle(app_module, crowded):
    refs, query, held, first = crowded
    app_module.inspect(1, 1, held, first)  # the visitor explores its result: in use again
    with pytest.raises(gr.Error, match="The server is full"):
        _run(app_module, refs[1:2], query, gr.Request(session_hash="b"))
    assert held.result is not None and not held.evicted


def test_a_fit_that_fails_on_its_input_drops_nobody(app_module, crowded, upload_dir):
    """Room is made only once the references decode: a caller sending junk evicts no one."""
    _, query, held, _ = crowded
    junk = upload_dir / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(gr.Error, match="junk.png"):
        _run(app_module, [str(junk)], query, gr.Request(session_hash="x"))
    assert held.result is not None and not held.evicted
