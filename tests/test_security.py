"""Hostile callers of a live ``python app.py``, through the raw queue API any HTTP client has.

Each test replays an attack on the public server (``POST /gradio_api/queue/join`` with an
endpoint's ``fn_index`` from ``/config``, then the event's stream from ``/queue/data``) and
asserts the refusal, its message, and the time and memory it cost. The server here is started
with a small gradio session table, so that what a flood of callers would do to a public Space
happens within a few calls.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import app_server
import httpx
import pytest
from PIL import Image

from subspace.data import MAX_FILE_BYTES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "examples" / "synthetic"
BALLSCREW = ROOT / "examples" / "ballscrew"
STATE_SESSIONS = 8  # gradio's per-session table: a handful of fresh callers overflow it
CALL_TIMEOUT_S = 180.0
UNREADABLE = "the upload could not be read; please upload it again."


class Raw:
    """The app's endpoints as a raw HTTP client calls them: any session id, any data."""

    def __init__(self, url: str) -> None:
        self.url = url
        config = httpx.get(f"{url}config", timeout=30).json()
        self.fns = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}

    def join(self, api_name: str, data: list, session: str, event_data=None) -> str:
        body = {
            "data": data,
            "fn_index": self.fns[api_name],
            "session_hash": session,
            "event_data": event_data,
            "trigger_id": None,
        }
        r = httpx.post(f"{self.url}gradio_api/queue/join", json=body, timeout=30)
        r.raise_for_status()
        return r.json()["event_id"]

    def call(self, api_name: str, data: list, session: str | None = None, event_data=None):
        """(success, output data or error message, seconds) of one call."""
        session = session or uuid.uuid4().hex[:11]
        t0 = time.perf_counter()
        event_id = self.join(api_name, data, session, event_data)
        with httpx.stream(
            "GET",
            f"{self.url}gradio_api/queue/data",
            params={"session_hash": session},
            timeout=CALL_TIMEOUT_S,
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                    out = msg.get("output") or {}
                    ok = bool(msg.get("success"))
                    return (
                        ok,
                        out.get("data") if ok else out.get("error"),
                        (time.perf_counter() - t0),
                    )
        raise AssertionError(f"/{api_name}: the stream ended without a result")

    def error(self, api_name: str, data: list, session: str | None = None, event_data=None):
        """The message of a call that must be refused, and its seconds."""
        ok, message, seconds = self.call(api_name, data, session, event_data)
        assert not ok, f"/{api_name} was not refused: {str(message)[:300]}"
        assert message and "Traceback" not in message, message
        return message, seconds


def _file(path, name: str | None = None, meta: bool = True) -> dict:
    """A file payload; without gradio's ``meta`` key gradio itself checks nothing."""
    out = {"path": str(path), "orig_name": name or Path(path).name}
    if meta:
        out["meta"] = {"_type": "gradio.FileData"}
    return out


def _detect_data(refs: list, query: dict) -> list:
    return [refs, query, "lite0", 0.25, None]  # None: the state, which the server keeps


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, pid, log path, the app's temp folder) of a server with small limits."""
    folder = tmp_path_factory.mktemp("security")
    log = folder / "server.log"
    env = {"SUBSPACE_GRADIO_SESSIONS": str(STATE_SESSIONS)}
    proc, url = app_server.start_server(log, folder / "gradio", env=env)
    try:
        app_server.wait_for_log(log, "example fits prepared", 120)  # memory settled
        pid = app_server.pid_listening_on(urlparse(url).port)
        yield url, pid, log, app_server.gradio_cache(pid)
    finally:
        app_server.stop_server(proc)


@pytest.fixture(scope="module")
def raw(server):
    return Raw(server[0])


@pytest.fixture(scope="module")
def uploaded(server):
    """Upload a file through gradio's own route; its payload as the page would send it."""
    url = server[0]

    def upload(path: Path) -> dict:
        with open(path, "rb") as f:
            r = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
        r.raise_for_status()
        return _file(r.json()[0], path.name)

    return upload


@pytest.fixture(scope="module")
def good(uploaded):
    """Uploaded references (two) and a query of the synthetic set."""
    refs = [uploaded(p) for p in sorted((SYNTHETIC / "normal").glob("*.png"))[:2]]
    return refs, uploaded(SYNTHETIC / "query" / "000_scratch.png")


def _rss(pid: int) -> float:
    return app_server.rss_mb(pid)


# ----------------------------------------------------------------------------- server paths
def test_a_server_path_is_never_read_whether_or_not_it_exists(raw, good, tmp_path):
    """Finding 1: a path without gradio's ``meta`` key used to be opened as the query (any
    readable image came back as ``query.jpg``) and the message told what the path was."""
    refs, _ = good
    secret = tmp_path / "exists" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(secret)
    missing = tmp_path / "missing" / "secret.png"
    messages = set()
    for path in (secret, missing):
        for meta in (False, True):
            message, seconds = raw.error("detect", _detect_data(refs, _file(path, meta=meta)))
            assert seconds < 10
            if not meta:  # gradio's own check words it its way; ours must not vary
                messages.add(message)
    assert messages == {f"query 'secret.png': {UNREADABLE}"}
    for path in ("/etc/shadow", "/etc/passwd", "/nonexistent/x.png", "/proc/self/environ"):
        message, _ = raw.error("detect", _detect_data(refs, _file(path, "q.png", meta=False)))
        assert message == f"query 'q.png': {UNREADABLE}"


def test_references_from_server_paths_are_refused_alike(raw, good, tmp_path):
    """Whatever the payload's form, a reference outside the app's files is refused with a
    message that is the same whether the path exists or not."""
    _, query = good
    real = tmp_path / "a" / "r.png"
    real.parent.mkdir()
    Image.new("RGB", (64, 64)).save(real)
    for meta in (False, True):
        said = set()
        for path in (real, tmp_path / "b" / "r.png"):  # paths of the same length
            message, _ = raw.error("detect", _detect_data([_file(path, "r.png", meta)], query))
            said.add(message.replace(str(path.parent), "DIR"))
        assert len(said) == 1, said
        message, _ = raw.error("detect", _detect_data([_file("/etc/passwd", "r", meta)], query))
        assert "root:" not in message


def test_devices_fifos_folders_and_links_are_refused_at_once(raw, good, server):
    """Inside the upload folder too: a FIFO used to hold the one model slot for every visitor,
    /dev/zero was read without limit."""
    url, pid, _, cache = server
    refs, query = good
    inside = cache / f"attack-{uuid.uuid4().hex[:6]}"
    inside.mkdir()
    os.mkfifo(inside / "fifo.png")
    (inside / "zero.png").symlink_to("/dev/zero")
    (inside / "passwd.png").symlink_to("/etc/passwd")
    (inside / "folder.png").mkdir()
    rss_before = _rss(pid)
    for name in ("fifo.png", "zero.png", "passwd.png", "folder.png"):
        for path in (inside / name, "/dev/zero" if name == "zero.png" else inside / name):
            message, seconds = raw.error("detect", _detect_data(refs, _file(path, name, False)))
            assert message == f"query '{name}': {UNREADABLE}"
            assert seconds < 10, (name, seconds)
            message, _ = raw.error("detect", _detect_data([_file(path, name)], query))
            assert message == f"reference '{name}': {UNREADABLE}" or "not uploaded" in message
    assert _rss(pid) - rss_before < 100, "reading a device grew the server"
    ok, out, _ = raw.call("detect", _detect_data(refs, query))  # the model slot is free
    assert ok and out[11]["n_references"] == 2


# ----------------------------------------------------------------------------- payload sizes
def test_a_call_over_the_body_limit_is_refused_before_it_is_read(raw, good, server):
    """Finding 3: a base64 query over the limit used to be decoded and left in gradio's cache;
    and gradio keeps each call's values in the session's page state."""
    _, pid, _, cache = server
    refs, _ = good
    before = {p for p in cache.rglob("*") if p.is_file()}
    body = base64.b64encode(b"\0" * (MAX_FILE_BYTES + 2**20)).decode()
    payload = {"path": "big.png", "url": f"data:image/png;base64,{body}", "orig_name": "big.png"}
    rss_before = _rss(pid)
    t0 = time.perf_counter()
    join = {"data": _detect_data(refs, payload), "fn_index": raw.fns["detect"], "session_hash": "b"}
    r = httpx.post(f"{raw.url}gradio_api/queue/join", json=join, timeout=60)
    assert r.status_code == 413 and "send images as files" in r.json()["error"]
    assert time.perf_counter() - t0 < 30
    chunked = httpx.post(  # no Content-Length: counted as it arrives
        f"{raw.url}gradio_api/queue/join",
        content=iter(
            [json.dumps(join).encode()[i : i + 2**20] for i in range(0, 40 * 2**20, 2**20)]
        ),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert chunked.status_code == 413
    assert not {p for p in cache.rglob("*") if p.is_file()} - before, "the payload was saved"
    assert _rss(pid) - rss_before < 200
    del body, payload, join
    # A small one is still welcome (and its size checked before decoding: uploads.data_url_bytes).
    buf = io.BytesIO()
    Image.open(SYNTHETIC / "query" / "000_scratch.png").convert("RGB").resize((256, 256)).save(
        buf, "PNG"
    )
    small = {
        "path": "q.png",
        "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
        "orig_name": "q.png",
    }
    ok, out, _ = raw.call("detect", _detect_data(refs, small))
    assert ok and out[11]["query"] == "q.png"


def test_a_url_is_never_fetched(raw, good):
    """gradio downloads a file payload whose path is a URL, whole, inside the call's slot."""
    refs, query = good
    for url in ("http://127.0.0.1:9/inf.png", "https://example.invalid/x.png"):
        for data in (_detect_data([_file(url)], query), _detect_data(refs, _file(url))):
            message, seconds = raw.error("detect", data)
            assert message == "Upload the image file; the app does not fetch URLs." and seconds < 10


def test_a_descriptor_path_into_the_upload_folder_is_refused(raw, good, server):
    """/proc/self/fd/N resolves into the upload folder when the server has a file open there;
    the path as given must lie inside it too."""
    refs, _ = good
    pid = server[1]
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int)[:64]:
        message, _ = raw.error(
            "detect", _detect_data(refs, _file(f"/proc/self/fd/{fd}", "q.png", False))
        )
        assert message == f"query 'q.png': {UNREADABLE}"


# ----------------------------------------------------------------------------- sessions
def test_fresh_sessions_do_not_push_out_a_visitor(raw, good):
    """Finding 2: calls under fresh session ids, holding nothing, used to evict a fitted
    visitor from gradio's session table; they get a message and the visitor keeps its work."""
    refs, query = good
    visitor = uuid.uuid4().hex[:11]
    ok, out, _ = raw.call("detect", _detect_data(refs, query), visitor)
    assert ok
    threshold = out[11]["threshold"]
    for _ in range(3 * STATE_SESSIONS):
        message, seconds = raw.error("threshold", [threshold, None])
        assert message == "Run the detector first, then set the mask threshold." and seconds < 10
    ok, out, _ = raw.call("threshold", [threshold, None], visitor)
    assert ok and out[2]["n_references"] == 2 and out[2]["threshold"] == pytest.approx(threshold)
    ok, out, _ = raw.call("inspect", [1, 1, None], visitor)
    assert ok and out[7]["patch"]["row"] == 0


# ----------------------------------------------------------------------------- API misuse
@pytest.mark.parametrize(
    ("api_name", "data", "then"),
    [
        ("threshold", [0.5, None], "set the mask threshold"),
        ("inspect", [1, 1, None], "click a patch"),
        ("bundle", [None], "download its results"),
    ],
)
def test_out_of_order_calls_say_what_to_do(raw, api_name, data, then):
    """Finding 5: these used to return gradio's update placeholders or None."""
    message, _ = raw.error(api_name, data)
    assert message == f"Run the detector first, then {then}."


def test_a_missing_threshold_is_named(raw):
    message, _ = raw.error("threshold", [None, None])
    assert message.startswith("The threshold is missing")


def test_the_api_page_describes_the_threshold_as_it_is(server):
    info = httpx.get(f"{server[0]}gradio_api/info", timeout=30).json()
    (param,) = info["named_endpoints"]["/threshold"]["parameters"]
    assert not param["parameter_has_default"]
    assert "between 0 and 1" not in json.dumps(param)
    assert "scores['threshold']" in json.dumps(param)


@pytest.mark.parametrize(
    "event_data",
    [{"index": "ab"}, {"index": [1]}, {"index": ["a", "b"]}, {"index": None}, {}, None],
)
def test_malformed_event_data_gets_the_apps_message(raw, good, server, event_data):
    """Finding 6: Python's own messages used to come back, with tracebacks in the log."""
    refs, query = good
    visitor = uuid.uuid4().hex[:11]
    log_before = len(server[2].read_text())
    assert raw.call("detect", _detect_data(refs, query), visitor)[0]
    message, _ = raw.error("select_sgfr", [None], visitor, event_data)
    assert message.startswith("Click a point") or "coordinate" in message, message
    message, _ = raw.error("pick_query", [None], visitor, event_data)
    assert message.startswith("Pick one of the example queries"), message
    log = server[2].read_text()[log_before:]
    assert "Traceback" not in log, log[-3000:]


def test_pick_query_takes_only_the_examples_shown(raw):
    visitor = uuid.uuid4().hex[:11]
    ok, _, _ = raw.call("example_synthetic", [], visitor)
    assert ok
    for index in (99, -1, 1.5, "0", True):
        message, _ = raw.error("pick_query", [None], visitor, {"index": index})
        assert message.startswith("Pick one of the example queries"), (index, message)
    ok, path, _ = raw.call("pick_query", [None], visitor, {"index": 0})
    assert ok and Path(path[0]["path"]).name == "000_scratch.png"


# ----------------------------------------------------------------------------- abandoned work
def test_a_fit_whose_client_has_gone_stops(raw, uploaded, good, server):
    """Finding 7: a client killed during a long fit used to hold the model slot to its end."""
    _, _, log, _ = server
    refs = [uploaded(p) for p in sorted((BALLSCREW / "normal").glob("*.*"))]
    refs += [uploaded(p) for p in sorted((SYNTHETIC / "normal").glob("*.png"))]
    _, query = good
    session = uuid.uuid4().hex[:11]
    raw.join("detect", _detect_data(refs[:16], query), session)
    started = threading.Event()
    with httpx.stream(
        "GET", f"{raw.url}gradio_api/queue/data", params={"session_hash": session}, timeout=60
    ) as stream:
        seen = []
        for line in stream.iter_lines():
            seen.append(line[:200])
            if "process_starts" in line:
                started.set()
            if started.is_set() and '"msg":"progress"' in line:
                break  # the fit is under way: the client goes
        else:
            raise AssertionError(f"the fit did not start: {seen}")
    t0 = time.perf_counter()
    app_server.wait_for_log(log, "detect stopped: its client has gone", 30)
    stopped_after = time.perf_counter() - t0
    ok, out, seconds = raw.call("detect", _detect_data(*good))  # the next visitor
    assert stopped_after < 20 and ok and seconds < 30, (stopped_after, seconds)
