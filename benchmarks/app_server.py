"""The demo app as a child process, and what a test can see of it from outside (Linux /proc).

``start_server`` runs ``python app.py`` on a free loopback port with its own gradio cache (Hub
offline, bundled backbone) and ``stop_server`` ends it; the rest reads a process's sockets,
memory and stray files; and the Chromium settings and page conditions that the browser test
and the app timing script both wait on. Used by the load test, the app timing script and the
test suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_ENV = {  # never wait on the network; local only
    "SUBSPACE_BACKBONE": "lite0",
    "HF_HUB_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SERVER_NAME": "127.0.0.1",
}
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# page.wait_for_function conditions: the first <img> under a selector shows a new, loaded
# source (arg: [selector, old src]); the per-dimension chart's heading changed (arg: old one).
NEW_IMAGE = """([sel, old]) => { const i = document.querySelector(sel);
    return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== old }"""
NEW_CHART = "old => document.querySelector('#dims .dimchart-title').innerText !== old"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail early if ``proc`` exits."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def wait_for_log(path: Path, text: str, timeout: float) -> None:
    """Poll the server log at ``path`` until it holds ``text`` (bounded: TimeoutError)."""
    t0 = time.perf_counter()
    while text not in path.read_text():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{text!r} not in {path.name} within {timeout:.0f} s")
        time.sleep(0.05)


def start_server(
    log_path: Path,
    cache: Path,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """``python app.py`` (or ``command``) on a free loopback port with its own gradio cache
    and ``env`` on top of the server's; (process, url)."""
    port = free_port()
    env = dict(
        os.environ,
        **SERVER_ENV,
        GRADIO_SERVER_PORT=str(port),
        GRADIO_TEMP_DIR=str(cache),
        **(env or {}),
    )
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process by stop_server)
    proc = subprocess.Popen(
        command or [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, timeout, proc)
    except BaseException:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


def listening_sockets(port: int) -> list[tuple[str, int]]:
    """(local IPv4/IPv6 address, socket inode) of every listening TCP socket on ``port``."""
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, hexport = cols[1].rsplit(":", 1)
            if int(hexport, 16) != port or cols[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out.append((ip, int(cols[9])))
    return out


def pid_listening_on(port: int) -> int | None:
    """The process that listens on TCP ``port`` (Linux /proc), or None."""
    inodes = {f"socket:[{inode}]" for _, inode in listening_sockets(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:  # gone, or not ours to look at
            continue
    return None


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident set size (or VmHWM, its peak) of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class RssSampler:
    """Samples a process's RSS every ``period`` seconds in a daemon thread; keeps the peak."""

    def __init__(self, pid: int | None, period: float = 0.1) -> None:
        self.pid, self.period, self.peak = pid, period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, KeyError):
                return
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def gradio_cache(pid: int | None = None) -> Path:
    """Where the app has gradio keep uploads and outputs: its own folder (``subspace-app-*``)
    under the server's GRADIO_TEMP_DIR, else under the system's temporary folder."""
    env = dict(os.environ)
    if pid is not None:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            env = dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)
        except OSError:
            pass
    base = Path(env.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
    own = sorted(base.glob("subspace-app-*"), key=lambda p: p.stat().st_mtime)
    return own[-1] if own else base


def stray_files(cache: Path | None = None) -> set[str]:
    """Files directly in gradio's cache root: never tracked, so never deleted by gradio."""
    cache = cache or gradio_cache()
    try:
        return {p.name for p in cache.iterdir() if p.is_file()}
    except OSError:
        return set()
