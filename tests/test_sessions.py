"""Many visitors on one live ``python app.py``: isolation, overload, API errors, security, leaks.

Uses the session-wide live server of ``conftest.live_app`` (127.0.0.1 only, always stopped).
Each ``gradio_client.Client`` is its own visitor session. Every loop is bounded in count and
every wait in time. The load test here is the short form of ``benchmarks/load_test.py``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import app_server
import httpx
import load_test
import numpy as np
import pytest
from PIL import Image

from subspace import result as rs
from subspace import session as ss
from subspace import uploads

ROOT = Path(__file__).resolve().parents[1]

SYNTHETIC = ROOT / "examples" / "synthetic"
BALLSCREW = ROOT / "examples" / "ballscrew"
CALL_TIMEOUT_S = 180.0  # one fit + predict on a loaded 2-core runner, with a wide margin
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry():
    """gradio_client reports usage unless told not to; nothing may leave the machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield


@pytest.fixture(scope="module")
def server(live_app):
    """(url, port, pid) of the live app."""
    url, _ = live_app
    port = urlparse(url).port
    pid = app_server.pid_listening_on(port)
    assert pid is not None, f"no process listens on port {port}"
    return url, port, pid


def _client(url: str, folder: Path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(folder))


def _files(folder: Path, n: int | None = None) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*.*"))[:n]]


def _detect(client, refs: list[str], query: str):
    from gradio_client import handle_file

    job = client.submit(
        refs=[handle_file(p) for p in refs],
        query=handle_file(query),
        backbone="lite0",
        ratio=0.25,
        api_name="/detect",
    )
    return job.result(timeout=CALL_TIMEOUT_S)


def _concurrently(*calls):
    """Run the zero-argument callables at the same moment; their results (or exceptions)."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, fn):
        start.wait(timeout=30)
        try:
            results[i] = fn()
        except Exception as err:  # reported by the caller's assertions
            results[i] = err

    threads = [
        threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(calls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=2 * CALL_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a concurrent call did not finish in time"
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _expected(refs: list[str], query: str):
    """The SGFR view and scores the app must show for this fit, computed here in-process."""
    session = ss.Session()
    ref_files, digest = uploads.read_references(refs)
    _, image = uploads.read_image(query, "query")
    fit, _ = session.fit(ref_files, digest, "lite0", 0.25)
    res = rs.make_result(fit.detector.predict(image), fit, Path(query).name, image, None, False)
    rs.threshold_range(res)
    view = np.asarray(rs.views(res)["sgfr"], dtype=np.float32)
    numbers = rs.scores(res, res.threshold)
    session.close()
    return view, numbers


def _image(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


# ----------------------------------------------------------------------------- isolation
@pytest.fixture(scope="module")
def visitors(server, tmp_path_factory):
    """Two visitors fitting different references at the same moment, on the same query."""
    url, _, _ = server
    query = str(SYNTHETIC / "query" / "000_scratch.png")
    refs = {
        "a": _files(SYNTHETIC / "normal", 1),  # the scratch's own texture: a calm background
        "b": _files(BALLSCREW / "normal", 2),  # another part altogether
    }
    clients = {k: _client(url, tmp_path_factory.mktemp(f"visitor_{k}")) for k in refs}
    try:
        out = dict(
            zip(
                refs,
                _concurrently(*(lambda k=k: _detect(clients[k], refs[k], query) for k in refs)),
                strict=True,
            )
        )
        yield clients, refs, query, out
    finally:
        for c in clients.values():
            c.close()


def test_concurrent_visitors_each_get_the_heatmap_of_their_own_fit(visitors):
    _, refs, query, out = visitors
    assert out["a"][11]["n_references"] == 1 and out["b"][11]["n_references"] == 2
    expected = {k: _expected(refs[k], query) for k in refs}
    got = {k: _image(out[k][1]) for k in refs}  # the SGFR heat map as the visitor received it
    for k, other in (("a", "b"), ("b", "a")):
        own = np.abs(got[k] - expected[k][0]).mean()
        cross = np.abs(got[k] - expected[other][0]).mean()
        assert own < 4.0, f"visitor {k}: heat map differs from its own fit by {own:.1f}"
        assert cross > 3 * own, f"visitor {k}: heat map is as close to the other fit's"
        score, want = out[k][11]["sgfr"]["score"], expected[k][1]["sgfr"]["score"]
        assert score == pytest.approx(want, rel=0.02)


def test_follow_up_calls_use_each_visitors_own_result(visitors):
    clients, refs, _, out = visitors
    a, b = clients["a"], clients["b"]
    top = out["a"][9]["maximum"]  # the top of this visitor's slider: a valid threshold
    thr, ins = _concurrently(
        lambda: a.predict(threshold=top, api_name="/threshold"),
        lambda: b.predict(x=0, y=0, api_name="/inspect"),
    )
    assert thr[2]["n_references"] == 1 and thr[2]["sgfr"] == out["a"][11]["sgfr"]
    assert ins[7]["n_references"] == 2 and ins[7]["sgfr"] == out["b"][11]["sgfr"]
    bundles = _concurrently(
        lambda: a.predict(api_name="/bundle"), lambda: b.predict(api_name="/bundle")
    )
    for bundle, n in zip(bundles, (1, 2), strict=True):
        with zipfile.ZipFile(bundle) as z:
            assert json.loads(z.read("scores.json"))["n_references"] == n


def test_a_new_visitor_sees_nobody_elses_result(server, visitors, tmp_path):
    from gradio_client.exceptions import AppError

    url, _, _ = server
    c = _client(url, tmp_path)
    try:
        for kwargs, name in (({}, "/bundle"), ({"threshold": 0.5}, "/threshold")):
            with pytest.raises(AppError, match="Run the detector first"):
                c.predict(**kwargs, api_name=name)
        with pytest.raises(AppError, match="Run the detector first"):
            c.predict(x=1, y=1, api_name="/inspect")
    finally:
        c.close()


def test_threshold_outside_the_visitors_fitted_range_is_clamped_to_it(visitors):
    """As on the page: a threshold beyond this visitor's calibrated range is clamped to it,
    and the scores say which threshold the mask used."""
    clients, _, _, out = visitors
    lo, hi = out["a"][9]["minimum"], out["a"][9]["maximum"]
    _, _, scores, shown = clients["a"].predict(threshold=lo - 1, api_name="/threshold")
    assert scores["threshold"] == pytest.approx(lo) and shown["value"] == pytest.approx(lo)
    _, _, scores, shown = clients["a"].predict(threshold=hi + 100, api_name="/threshold")
    assert scores["threshold"] == pytest.approx(hi) and scores["defect_area"] == 0.0
    assert shown["value"] == pytest.approx(hi)  # the slider shows the threshold the mask used


# ----------------------------------------------------------------------------- API input
def test_api_calls_with_missing_or_wrong_arguments_get_clear_messages(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, _, _ = server
    c = _client(url, tmp_path)
    ref = handle_file(_files(SYNTHETIC / "normal", 1)[0])
    query = handle_file(str(SYNTHETIC / "query" / "000_scratch.png"))
    pdf = tmp_path / "scan.png"  # a PDF renamed: the message says what it really is
    pdf.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
    try:
        with pytest.raises(TypeError, match="refs"):
            c.predict(api_name="/detect")
        cases = [
            (dict(refs=[], query=query), "reference"),
            (dict(refs=[ref], query=query, ratio=5), "maximum"),
            (dict(refs=[ref], query=query, ratio="half"), "float"),
            (dict(refs=[ref], query=query, backbone="vgg"), "choices"),
            (dict(refs="ref.png", query=query), "file"),
            (dict(refs=[ref], query=42), "image"),
            (dict(refs=[ref], query=handle_file(str(pdf))), "pdf document"),
            (dict(refs=[handle_file(str(pdf))], query=query), "reference 'scan.png'"),
        ]
        for kwargs, word in cases:
            with pytest.raises(AppError) as info:
                c.predict(**kwargs, api_name="/detect")
            text = str(info.value)
            assert word in text.lower() and "verbose error reporting" not in text, (kwargs, text)
        with pytest.raises(AppError, match="threshold must be a number"):
            c.predict(threshold="high", api_name="/threshold")
    finally:
        c.close()
    # Raw HTTP with too few / wrongly shaped values.
    for name, body, status in [
        ("inspect", {"data": []}, 200),
        ("threshold", {"data": ["x"]}, 200),
        ("detect", {"data": "notalist"}, 422),
    ]:
        r = httpx.post(f"{url}gradio_api/call/{name}", json=body, timeout=30)
        assert r.status_code == status, r.text
        if status == 200:
            event = httpx.get(f"{url}gradio_api/call/{name}/{r.json()['event_id']}", timeout=60)
            assert "event: error" in event.text
            payload = json.loads(event.text.split("data:", 1)[1].strip())
            assert payload.get("error"), f"/{name}: an error without a message: {event.text}"
    assert httpx.get(url, timeout=30).status_code == 200  # still up


def test_overload_queues_or_says_the_queue_is_full(server, app_module, tmp_path):
    """More jobs than the queue holds while the model is busy: clean answers, no crash."""
    from gradio_client import handle_file

    url, _, _ = server
    c = _client(url, tmp_path)
    query = handle_file(str(SYNTHETIC / "query" / "001_good.png"))
    try:
        blocker = c.submit(
            refs=[handle_file(p) for p in _files(BALLSCREW / "normal")[:5]],  # a long fit
            query=query,
            backbone="lite0",
            api_name="/detect",
        )
        time.sleep(0.5)
        jobs = [c.submit(refs=[], query=query, api_name="/detect") for _ in range(40)]
        busy = not blocker.done()
        answers = []
        for job in [blocker, *jobs]:
            try:
                job.result(timeout=CALL_TIMEOUT_S)
                answers.append("ok")
            except Exception as err:
                answers.append(str(err))
    finally:
        c.close()
    full = [a for a in answers if "queue is full" in a.lower()]
    refused = [a for a in answers if a.startswith("Add 1 to 16")]
    assert answers[0] == "ok"
    assert len(full) + len(refused) == len(jobs), set(answers) - {"ok"}
    if busy:  # the queue holds max_size jobs; the rest were told so at once
        assert full and len(refused) <= app_module.demo._queue.max_size
    assert httpx.get(url, timeout=30).status_code == 200


def test_short_load_run(server):
    """The short form of benchmarks/load_test.py: 3 visitors x (1 fit + 2 predictions)."""
    url, _, pid = server
    result = load_test.run_load(url, clients=3, predictions=2, refs=1, pid=pid, max_seconds=240)
    print("\nload test (short):", json.dumps(result, indent=1))
    assert result["errors"] == 0, result["error_samples"]
    assert result["fits"] == 3 and result["predictions"] == 6 and result["queue_full"] == 0
    assert result["fit_reused_share"] == 1.0  # each session's later calls reused its own fit
    assert result["peak_rss_mb"] < 4096


# ----------------------------------------------------------------------------- security
def test_server_listens_on_loopback_only(server):
    _, port, pid = server
    addresses = [ip for ip, _ in app_server.listening_sockets(port)]
    assert addresses and set(addresses) <= LOOPBACK, addresses
    # Nor any other port of the app's process.
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    others = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[9]) in inodes:
                others.append(int(cols[1].rsplit(":", 1)[1], 16))
    for other in set(others):
        ips = [ip for ip, _ in app_server.listening_sockets(other)]
        assert set(ips) <= LOOPBACK, (other, ips)


@pytest.mark.parametrize(
    "path",
    [
        "gradio_api/file=/etc/passwd",
        "file=/etc/passwd",
        "gradio_api/file=../../etc/passwd",
        "gradio_api/file=..%2F..%2F..%2Fetc%2Fpasswd",
        "gradio_api/file=app.py",
        "gradio_api/file={root}/app.py",
        "gradio_api/file={root}/subspace/session.py",
        "file={root}/app.py",
        "gradio_api/file=/proc/self/environ",
        "gradio_api/file={cache}/../../etc/passwd",
        "static/../app.py",
        "app.py",
    ],
)
def test_file_routes_refuse_paths_outside_the_apps_files(server, path):
    url, _, pid = server
    path = path.format(root=ROOT, cache=app_server.gradio_cache(pid))
    r = httpx.get(url + path, timeout=30)
    assert r.status_code in (400, 403, 404), (path, r.status_code)
    assert "root:" not in r.text and "import gradio" not in r.text and "HOME=" not in r.text


def test_uploads_are_served_back_but_the_size_limit_holds(server, app_module):
    url, _, _ = server
    limit = app_module.launch_kwargs()["max_file_size"]
    assert limit == app_module.MAX_FILE_BYTES
    ok = httpx.post(
        f"{url}gradio_api/upload", files={"files": ("a.png", b"small", "image/png")}, timeout=60
    )
    assert ok.status_code == 200
    served = httpx.get(f"{url}gradio_api/file={ok.json()[0]}", timeout=30)
    assert served.status_code == 200 and served.content == b"small"  # the route works at all
    big = httpx.post(
        f"{url}gradio_api/upload",
        files={"files": ("big.png", b"\0" * (limit + 1), "image/png")},
        timeout=120,
    )
    assert big.status_code == 413, big.status_code
    assert httpx.get(url, timeout=30).status_code == 200


_PY = [ROOT / "app.py", *(ROOT / "subspace").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]


def test_no_pickle_anywhere_in_the_project_code():
    for path in _PY:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib)\b", text, re.M), (
            path
        )
        assert "allow_pickle=True" not in text, path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in call.group(1), f"{path}: {call.group(0)}"


def test_a_pickled_bank_is_refused_not_run(tmp_path):
    """Detector.load reads JSON and safetensors only: a pickle in its place never executes."""
    import torch

    from subspace.detector import FORMAT_VERSION, Detector

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(dict(format=FORMAT_VERSION, config=dict(backbone="lite0")))
    )
    torch.save({"bank": Payload()}, folder / "bank.safetensors")
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own header error)
        Detector.load(folder, backbone=ss.get_backbone("lite0"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- leaks
def _rss_mb() -> float:
    gc.collect()
    return app_server.rss_mb(os.getpid())


def _alive(*types) -> int:
    gc.collect()
    return sum(type(o) in types for o in gc.get_objects())  # type(): no lazy-module hooks


def test_no_memory_growth_over_many_predictions(app_module, monkeypatch):
    """RSS after 25 handler runs stays within 10 % of RSS after 5 (short form of --leak), and
    no result or session outlives its run.

    The detector's input size is lowered to keep the suite fast: what could leak (results,
    renders at display size, bundles) does not depend on it.
    """
    import functools

    from subspace import detector
    from subspace.detector import Config, Prediction

    monkeypatch.setattr(detector, "Config", functools.partial(Config, size=64))
    refs, _, _, queries = app_module.load_example("synthetic")
    kinds = (Prediction, rs.Result, ss.Session, ss.Fit)
    state, marks, alive = None, {}, {}
    for i in range(25):
        out = app_module.detect(
            refs[:2], queries[i % len(queries)], "lite0", 0.25, state, lambda *a, **k: None
        )
        state = out[-1]
        app_module.set_threshold(state.result.threshold, state)
        app_module.inspect(i, i, state)
        app_module.export(state)
        del out
        if i + 1 in (5, 25):
            marks[i + 1], alive[i + 1] = _rss_mb(), _alive(*kinds)
    state.close()
    growth = (marks[25] - marks[5]) / marks[5]
    print(f"\nRSS after 5 runs {marks[5]:.0f} MB, after 25 {marks[25]:.0f} MB ({growth:+.1%})")
    assert math.isfinite(growth) and growth <= load_test.LEAK_TOLERANCE
    assert alive[25] <= alive[5], f"objects kept alive: {alive}"


def test_uploads_leave_no_stray_files_in_gradios_cache(app_module):
    """Every run passes the references through gr.File's preprocess: it must not add files."""
    from gradio.data_classes import FileData, ImageData, ListFiles

    ref = str(SYNTHETIC / "normal" / "normal_000.png")
    blocks = {getattr(b, "elem_id", None): b for b in app_module.demo.blocks.values()}
    cache = Path(blocks["refs"].GRADIO_CACHE)
    before = app_server.stray_files(cache)
    for _ in range(20):
        blocks["refs"].preprocess(ListFiles(root=[FileData(path=ref, orig_name="r.png")]))
        blocks["query"].preprocess(ImageData(path=ref, orig_name="q.png"))
    assert len(app_server.stray_files(cache) - before) < 10


def test_session_files_are_bounded_and_removed(app_module):
    refs, _, _, queries = app_module.load_example("synthetic")
    out = app_module.detect(refs[:1], queries[0], "lite0", 0.25, None, lambda *a, **k: None)
    state = out[-1]
    for q in queries[:3]:  # three query names: only the latest bundle is kept
        app_module.detect(refs[:1], q, "lite0", 0.25, state, lambda *a, **k: None)
        assert Path(app_module.export(state)).is_file()
    assert len(list(state.folder.iterdir())) == 1
    folder = state.folder
    ss.close_session(state)
    assert not folder.exists()
    # A session gradio drops without the delete callback (e.g. evicted) takes its files too.
    other = app_module.detect(refs[:1], queries[0], "lite0", 0.25, None, lambda *a, **k: None)
    folder = other[-1].folder
    app_module.export(other[-1])
    assert folder.exists()
    del other, out, state
    gc.collect()
    assert not folder.exists()


def test_sessions_beyond_the_capacity_are_dropped_with_their_memory(app_module):
    """gradio evicts the least recently active visitor past ``state_session_capacity``
    without calling the delete callback: the Session must still be freed, files included."""
    import weakref

    from gradio.state_holder import StateHolder

    assert app_module.launch_kwargs()["state_session_capacity"] == ss.MAX_SESSIONS
    state_id = next(k for k, b in app_module.demo.blocks.items() if b is app_module.state)
    holder = StateHolder()
    holder.blocks, holder.capacity = app_module.demo, 2  # set_blocks() would rebind the demo
    refs = []
    for i in range(3):
        session = ss.Session()
        session.folder.mkdir(parents=True)
        (session.folder / "x_results.zip").write_bytes(b"zip")
        holder[f"visitor{i}"][state_id] = session
        refs.append((weakref.ref(session), session.folder))
        del session
    gc.collect()
    assert "visitor0" not in holder and "visitor2" in holder
    assert refs[0][0]() is None and not refs[0][1].exists()  # evicted: freed, files gone
    assert refs[2][0]() is not None and refs[2][1].exists()
    holder.delete_state("visitor1")
    holder.delete_state("visitor2")
    gc.collect()
    assert not refs[2][1].exists()


def test_allocator_is_tuned_where_glibc_runs_the_server():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert ss.tune_allocator()


def test_the_offline_fallback_is_logged_at_startup(server):
    """Whoever starts the app (a terminal, a Space's logs) learns which backbone it falls to."""
    log = (ROOT / "artifacts" / "app_server.log").read_text()
    assert "WARNING app: The Hugging Face Hub is unreachable" in log
    assert "EfficientNet-Lite0" in log


@pytest.mark.parametrize(
    "when", ["warm-up done", "example fits prepared"], ids=["examples", "visitor"]
)
def test_stopping_while_fitting_is_clean(tmp_path, when):
    """SIGTERM while the example sets are fitted in the background (the first seconds after
    start-up), or while a visitor's own fit runs: the fit stops at its next step before the
    interpreter exits. Torch still computing in another thread at exit used to abort the
    process ("terminate called without an active exception"), leaving the visitors' files."""
    from gradio_client import Client, handle_file

    proc, url = app_server.start_server(tmp_path / "server.log", tmp_path / "gradio")
    log = tmp_path / "server.log"
    try:
        app_server.wait_for_log(log, when, 60)
        if when == "warm-up done":  # the example fits start right after
            time.sleep(0.5)
            assert "example fits prepared" not in log.read_text()  # still fitting them
        else:
            client = Client(url, verbose=False)
            refs = [handle_file(p) for p in _files(SYNTHETIC / "normal", 5)]  # not prepared
            query = handle_file(str(SYNTHETIC / "query" / "000_scratch.png"))
            job = client.submit(refs=refs, query=query, api_name="/detect")
            time.sleep(1.0)  # its fit is under way
            assert not job.done()
    finally:
        app_server.stop_server(proc)
    text = log.read_text()
    assert proc.returncode == 0 and "terminate called" not in text, text[-2000:]


def test_stopping_the_server_removes_its_temp_folder(tmp_path):
    """SIGTERM (how a Space or a terminal stops the app) is a normal exit: the app's own temp
    folder (gradio's cache for it: uploads, results, bundles) is removed, not left behind,
    even when a second SIGTERM follows while it shuts down (which used to kill it, or raise in
    exit handlers)."""
    from gradio_client import Client, handle_file

    base = tmp_path / "gradio"
    proc, url = app_server.start_server(tmp_path / "server.log", base)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        refs = [handle_file(p) for p in _files(SYNTHETIC / "normal", 3)]
        query = handle_file(str(SYNTHETIC / "query" / "000_scratch.png"))
        client.predict(refs=refs, query=query, backbone="lite0", api_name="/detect")
        bundle = Path(client.predict(api_name="/bundle"))
        folders = list(base.glob("subspace-app-*"))
        assert len(folders) == 1 and any(folders[0].rglob("*.zip")), folders
        assert any(folders[0].rglob("*.png")) and any(folders[0].rglob("*.jpg"))
        assert bundle.exists()  # the client's own copy
    finally:
        proc.terminate()
        time.sleep(0.15)
        if proc.poll() is None:
            proc.terminate()  # e.g. a supervisor and `timeout` each sending one
        app_server.stop_server(proc)
    log = (tmp_path / "server.log").read_text()
    assert proc.returncode == 0 and "Traceback" not in log, log[-2000:]
    assert not folders[0].exists() and not list(base.iterdir()), list(base.rglob("*"))[:5]


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_reload_mode_serves_and_ends_with_its_command(tmp_path):
    """``gradio app.py`` (reload mode) runs the file again in a watcher thread: that run must not
    start a second server or touch signals (it used to die with "signal only works in main
    thread"); and the server, a child of gradio's command, ends when the command is stopped."""
    import shutil

    command = [shutil.which("gradio") or "gradio", str(ROOT / "app.py")]
    log = tmp_path / "server.log"
    proc, url = app_server.start_server(log, tmp_path / "gradio", command=command)
    try:
        server = app_server.pid_listening_on(urlparse(url).port)
        assert server is not None and server != proc.pid
        assert httpx.get(url, timeout=30).status_code == 200
        app_server.wait_for_log(log, "Watching:", 30)
    finally:
        app_server.stop_server(proc)
    deadline = time.monotonic() + 20
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(server), "the server outlived gradio's reload command"
    text = log.read_text()
    assert "signal only works" not in text and "Traceback" not in text, text[-2000:]
