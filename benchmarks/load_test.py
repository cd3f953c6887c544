"""Bounded load and leak test of the demo over loopback: many visitors, one process, no crash.

    python benchmarks/load_test.py                            # 16 clients x 10 predictions
    python benchmarks/load_test.py --leak                     # RSS after 30 vs 300 predictions
    python benchmarks/load_test.py --url http://127.0.0.1:7860/ --pid 1234   # a running app

Without ``--url`` it starts ``python app.py`` on a free 127.0.0.1 port (Hub offline, bundled
backbone) and always stops it. Each client is its own ``gradio_client`` session: it fits 5 of
the 6 synthetic example references once (its first call: the whole set is fitted once at the
app's start-up and shared, a subset is not), then runs predictions on the example queries, which
reuse that fit. Every loop is bounded in count and in time (``--max-seconds``); the script stops
by itself. Reported: p50/p95 latency (fits and warm predictions apart), errors (anything but a
clean "queue is full"), the server's peak RSS (sampled every 0.1 s, and the kernel's VmHWM),
stray files left in gradio's cache. Exit code 0 when there were no errors and, with --leak,
the RSS after the last prediction is within 10 % of the RSS after the first ``--leak-start``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from app_server import (
    ROOT,
    RssSampler,
    gradio_cache,
    pid_listening_on,
    rss_mb,
    start_server,
    stop_server,
    stray_files,
    wait_ready,
)

LEAK_TOLERANCE = 0.10  # RSS after the last prediction may exceed RSS after the first by 10 %
QUEUE_FULL = "queue is full"  # gradio's message when the queue's max_size is reached


# ----------------------------------------------------------------------------- clients
@dataclass
class Tally:
    """What the clients saw; appended to from several threads (list.append is atomic)."""

    fit_s: list[float] = field(default_factory=list)
    predict_s: list[float] = field(default_factory=list)
    queue_full: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)


def example_files(name: str = "synthetic", refs: int | None = None) -> tuple[list, list]:
    """(reference paths, query paths) of an example set; the synthetic one is generated."""
    sys.path.insert(0, str(ROOT))
    from subspace.examples import example_sets

    ex = example_sets(ROOT / "examples")[name]
    return [str(p) for p in ex.normal[:refs]], [str(p) for p in ex.query]


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def _visitor(
    url: str,
    refs: list[str],
    queries: list[str],
    predictions: int,
    tally: Tally,
    deadline: float,
    timeout: float,
    start: threading.Barrier | None = None,
    after_each: Callable[[int], None] | None = None,
) -> None:
    """One session: a fit (its first call), then ``predictions`` runs that reuse it."""
    from gradio_client import handle_file

    try:
        client = _client(url)
    except Exception as err:  # counted, never raised: the run must finish
        tally.errors.append(f"connect: {type(err).__name__}: {err}")
        return
    if start is not None:
        start.wait(timeout=60)
    ref_files = [handle_file(p) for p in refs]
    for i in range(predictions + 1):
        if time.perf_counter() > deadline:
            tally.errors.append("stopped: --max-seconds reached")
            return
        t0 = time.perf_counter()
        try:
            job = client.submit(
                refs=ref_files,
                query=handle_file(queries[i % len(queries)]),
                backbone="lite0",
                ratio=0.25,
                api_name="/detect",
            )
            out = job.result(timeout=timeout)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            (tally.queue_full if QUEUE_FULL in text.lower() else tally.errors).append(text)
            continue
        dt = time.perf_counter() - t0
        scores = out[-1]
        (tally.predict_s if scores.get("fit_reused") else tally.fit_s).append(dt)
        if i > 0:
            tally.reused.append(bool(scores.get("fit_reused")))
        if after_each is not None:
            after_each(i)
    client.close()


def _du_mb(folder: Path) -> float:
    """Size of everything under ``folder`` in MiB (0 if it does not exist)."""
    total = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total / 2**20


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_load(
    url: str,
    clients: int = 16,
    predictions: int = 10,
    refs: int | None = 5,
    pid: int | None = None,
    max_seconds: float = 900.0,
    timeout: float = 300.0,
) -> dict:
    """``clients`` concurrent sessions, each one fit + ``predictions`` warm predictions."""
    ref_paths, queries = example_files(refs=refs)
    tally = Tally()
    deadline = time.perf_counter() + max_seconds
    start = threading.Barrier(clients)
    cache = gradio_cache(pid)
    stray_before = stray_files(cache)
    rss_before = rss_mb(pid) if pid else None
    t0 = time.perf_counter()
    with RssSampler(pid) as sampler:
        threads = [
            threading.Thread(
                target=_visitor,
                args=(url, ref_paths, queries, predictions, tally, deadline, timeout, start),
                daemon=True,
            )
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.perf_counter() + timeout))
    wall = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    if hung:
        tally.errors.append(f"{hung} clients still running after the time limit")
    n_pred = len(tally.predict_s)
    return dict(
        clients=clients,
        predictions_per_client=predictions,
        references=len(ref_paths),
        wall_s=wall,
        fits=len(tally.fit_s),
        predictions=n_pred,
        throughput_per_s=n_pred / wall if wall else None,
        fit_p50_s=_pct(tally.fit_s, 50),
        fit_p95_s=_pct(tally.fit_s, 95),
        predict_p50_s=_pct(tally.predict_s, 50),
        predict_p95_s=_pct(tally.predict_s, 95),
        predict_max_s=max(tally.predict_s, default=None),
        fit_reused_share=float(np.mean(tally.reused)) if tally.reused else None,
        queue_full=len(tally.queue_full),
        errors=len(tally.errors),
        error_samples=sorted(set(tally.errors))[:5],
        rss_before_mb=rss_before,
        peak_rss_mb=sampler.peak if pid else None,
        rss_after_mb=rss_mb(pid) if pid else None,
        vm_hwm_mb=rss_mb(pid, "VmHWM") if pid else None,
        cache_dir=str(cache),
        stray_cache_files=len(stray_files(cache) - stray_before),
        cache_mb=_du_mb(cache),
    )


def run_leak(
    url: str,
    pid: int,
    start: int = 30,
    end: int = 300,
    refs: int | None = 5,
    max_seconds: float = 1800.0,
    timeout: float = 300.0,
) -> dict:
    """One session: RSS after ``start`` predictions vs after ``end`` (same fit throughout)."""
    ref_paths, queries = example_files(refs=refs)
    tally = Tally()
    marks: dict[int, float] = {}

    def mark(i: int) -> None:  # i = 0 is the fit; i predictions done after call i
        if i in (start, end) or i % 50 == 0:
            marks[i] = rss_mb(pid)

    cache = gradio_cache(pid)
    stray_before, cache_before = stray_files(cache), _du_mb(cache)
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    with RssSampler(pid) as sampler:
        _visitor(url, ref_paths, queries, end, tally, deadline, timeout, after_each=mark)
    a, b = marks.get(start), marks.get(end)
    growth = (b - a) / a if a and b else None
    return dict(
        references=len(ref_paths),
        predictions=len(tally.predict_s),
        wall_s=time.perf_counter() - t0,
        predict_p50_s=_pct(tally.predict_s, 50),
        predict_p95_s=_pct(tally.predict_s, 95),
        rss_by_prediction_mb={str(k): round(v, 1) for k, v in sorted(marks.items())},
        rss_start_mb=a,
        rss_end_mb=b,
        growth=growth,
        within_tolerance=growth is not None and growth <= LEAK_TOLERANCE,
        errors=len(tally.errors),
        error_samples=sorted(set(tally.errors))[:5],
        peak_rss_mb=sampler.peak,
        vm_hwm_mb=rss_mb(pid, "VmHWM"),
        stray_cache_files=len(stray_files(cache) - stray_before),
        cache_growth_mb=_du_mb(cache) - cache_before,
    )


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running app (loopback); default: start app.py here")
    p.add_argument("--pid", type=int, help="its process id, for RSS (found from the port)")
    p.add_argument("--clients", type=int, default=16, help="concurrent sessions (default 16)")
    p.add_argument("--predictions", type=int, default=10, help="per client after the fit")
    p.add_argument(
        "--refs", type=int, default=5, help="example references (default 5: not the prepared set)"
    )
    p.add_argument("--leak", action="store_true", help="leak mode: one session, RSS over time")
    p.add_argument("--leak-start", type=int, default=30, help="first RSS mark (predictions)")
    p.add_argument("--leak-end", type=int, default=300, help="last RSS mark (predictions)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio_client: no telemetry

    proc = None
    try:
        if args.url:
            url = args.url
            host = url.split("//", 1)[-1].split("/", 1)[0]
            if host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
                p.error("--url must be a loopback address")
            wait_ready(url, 60)
            port = int(host.rsplit(":", 1)[1]) if ":" in host else 80
            pid = args.pid or pid_listening_on(port)
        else:
            log = ROOT / "artifacts" / "load_test_server.log"
            log.parent.mkdir(exist_ok=True)
            print("starting app.py ...", file=sys.stderr)
            cache = Path(tempfile.mkdtemp(prefix="load_test_gradio_"))
            proc, url = start_server(log, cache)
            pid = proc.pid
        print(f"server {url} pid {pid}", file=sys.stderr)
        if args.leak:
            if pid is None:
                p.error("--leak needs the server's pid (--pid)")
            result = run_leak(url, pid, args.leak_start, args.leak_end, args.refs, args.max_seconds)
            ok = result["errors"] == 0 and result["within_tolerance"]
        else:
            result = run_load(url, args.clients, args.predictions, args.refs, pid, args.max_seconds)
            ok = result["errors"] == 0 and result["predictions"] > 0
    finally:
        if proc is not None:
            stop_server(proc)
            shutil.rmtree(cache, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
