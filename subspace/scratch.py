"""The app's own temporary folder: created at start, swept while running, removed at exit.

Everything the app and gradio write for visitors (uploads, base64 payloads, rendered results,
galleries, bundles) lands in one folder of this process's own, which gradio uses as its cache
(``GRADIO_TEMP_DIR``). Files not used for ``max_age_s`` are deleted while the app runs (an
upload that is read again is touched, so a visitor's references stay while they are in use),
and the whole folder goes when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "subspace-app-"
_APP_FOLDER: Path | None = None  # this process's folder (the app module may run twice)


def create(base: str | os.PathLike | None = None) -> Path:
    """A new, private folder under ``base`` (default: ``GRADIO_TEMP_DIR`` or the system's
    temporary folder), removed when the interpreter exits."""
    base = base or os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    Path(base).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base)).resolve()
    atexit.register(shutil.rmtree, folder, True)
    return folder


def app_folder() -> Path:
    """The app's folder in this process, created on first use (:func:`create`)."""
    global _APP_FOLDER
    if _APP_FOLDER is None or not _APP_FOLDER.is_dir():
        _APP_FOLDER = create()
    return _APP_FOLDER


def touch(path: str | os.PathLike) -> None:
    """Mark a file as in use now, so that :func:`sweep` keeps it."""
    with contextlib.suppress(OSError):
        os.utime(path)


def sweep(folder: str | os.PathLike, max_age_s: float, now: float | None = None) -> int:
    """Delete files under ``folder`` not modified for ``max_age_s`` seconds, then the folders
    left empty (not ``folder`` itself). Returns the number of files deleted."""
    now = time.time() if now is None else now
    removed = 0
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if now - os.lstat(path).st_mtime > max_age_s:
                    os.remove(path)
                    removed += 1
            except OSError:  # gone already, or in use elsewhere: next sweep
                continue
        if Path(dirpath) != Path(folder):
            with contextlib.suppress(OSError):
                if now - os.lstat(dirpath).st_mtime > max_age_s:  # not one just made
                    os.rmdir(dirpath)  # only succeeds when empty
    return removed


def start_sweeper(
    folder: str | os.PathLike, max_age_s: float, every_s: float, stop: threading.Event
) -> threading.Thread:
    """Sweep ``folder`` every ``every_s`` seconds in a daemon thread until ``stop`` is set."""

    def run() -> None:
        while not stop.wait(every_s):
            if n := sweep(folder, max_age_s):
                log.info("removed %d files unused for %.0f s", n, max_age_s)

    thread = threading.Thread(target=run, daemon=True, name="temp-sweeper")
    thread.start()
    return thread
