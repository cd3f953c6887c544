"""Shared fixtures: the app module (offline, bundled backbone) and a live `python app.py`."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# As app.py does, before anything imports torch: sleeping (not spinning) OpenMP threads keep
# torch fast when the 2 cores are shared with other processes (a busy CI runner, a browser).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
# The app must never wait on the network in tests: bundled backbone, Hub marked offline.
APP_ENV = {
    "SUBSPACE_BACKBONE": "lite0",
    "HF_HUB_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}
SERVER_START_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def app_module():
    """``app`` imported with the test environment (Hub offline, lite0 preselected)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in APP_ENV.items():
            mp.setenv(key, value)
        if str(ROOT) not in sys.path:
            mp.syspath_prepend(str(ROOT))
        module = importlib.import_module("app")
    return module


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited. Fails on exit or timeout."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"app.py did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """Start ``python app.py`` on a free local port; yields (url, seconds to first answer).

    The server is always terminated, and its log is kept under artifacts/ for debugging.
    """
    port = free_port()
    env = dict(os.environ, **APP_ENV, GRADIO_SERVER_PORT=str(port))
    env.pop("GRADIO_SERVER_NAME", None)  # local only
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "app_server.log", "w")  # noqa: SIM115 (closed below)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_ready(url, proc, SERVER_START_TIMEOUT_S)
        yield url, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
