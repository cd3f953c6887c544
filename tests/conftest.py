"""Shared fixtures: the app module (offline, bundled backbone) and a live `python app.py`."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from app_server import SERVER_ENV, start_server, stop_server

# As app.py does, before anything imports torch: sleeping (not spinning) OpenMP threads keep
# torch fast when the 2 cores are shared with other processes (a busy CI runner, a browser).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
# The app must never wait on the network in tests: bundled backbone, Hub marked offline.
APP_ENV = {k: v for k, v in SERVER_ENV.items() if k != "GRADIO_SERVER_NAME"}
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


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """Start ``python app.py`` on a free local port; yields (url, seconds to first answer).

    Launched by ``benchmarks/app_server.py``'s helpers (127.0.0.1 only, Hub offline, a
    private gradio cache); always stopped, its log kept under artifacts/ for debugging.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    cache = tmp_path_factory.mktemp("gradio_cache")
    proc, url = start_server(ARTIFACTS / "app_server.log", cache, SERVER_START_TIMEOUT_S)
    try:
        yield url, time.perf_counter() - t0
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def received(app_module):
    """Makes a new folder inside the app's upload folder: files there are what gradio received
    for the app (the app reads no other path a client names)."""

    def make(name: str = "upload") -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=app_module.TEMP))

    return make


@pytest.fixture
def upload_dir(received):
    """A folder of uploads, as gradio stores them for the app."""
    return received()
