"""Visitors' sessions by gradio session id, within a memory budget in bytes.

gradio keeps one state per session id in a least-recently-used table of fixed length: any
caller can push a visitor's state out of it with a few dozen calls under fresh ids that hold
nothing. The app therefore keeps the sessions that hold a fit or a result here as well, under
their id, and finds them here when gradio has dropped its copy. What bounds the memory is the
bytes those sessions hold, not their number: when a fit would go over the budget, sessions
idle for at least ``idle_s`` are dropped, least recently used first; when none is, the new
work is refused with :class:`ServerFull`. Sessions idle for ``ttl_s`` are dropped in any case.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MB = 2**20
BUDGET_ENV = "SUBSPACE_MEMORY_MB"
BUDGET_DEFAULT_MB = 4096  # visitors' fits and results; a 16 GB Space keeps the rest
IDLE_S = 120.0  # a session idle this long may be dropped to make room for another's fit


class ServerFull(Exception):
    """No room for more visitors' work now; str(err) is shown to the visitor as-is."""


def env_number(name: str, default: float) -> float:
    """The positive number in environment variable ``name``, else ``default``."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 and value != float("inf") else default


def budget_bytes() -> int:
    """The budget in bytes: ``SUBSPACE_MEMORY_MB`` if set to a positive number, else 4096 MB."""
    return int(env_number(BUDGET_ENV, BUDGET_DEFAULT_MB) * MB)


def footprint(roots: Iterable[Any], shared: Iterable[Any] = ()) -> int:
    """Bytes of the arrays, tensors, images and byte strings reachable from ``roots``, each
    counted once; objects in ``shared`` (and torch modules: the shared backbones) are not
    entered. Plain Python containers and objects' attributes are followed."""
    torch = sys.modules.get("torch")
    seen = {id(s) for s in shared}
    stack, total = list(roots), 0
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj if obj.base is None else obj.base
            if isinstance(base, np.ndarray) and id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
            elif base is obj:
                total += obj.nbytes
        elif torch is not None and isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if id(storage) not in seen:  # views share one storage
                seen.add(id(storage))
                total += storage.nbytes()
        elif torch is not None and isinstance(obj, torch.nn.Module):
            continue
        elif isinstance(obj, Image.Image):
            total += obj.width * obj.height * len(obj.getbands())
        elif isinstance(obj, bytes | bytearray):
            total += len(obj)
        elif isinstance(obj, str | int | float | bool | complex):
            continue
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s, None) for s in obj.__slots__)
    return total


class SessionStore:
    """Sessions (anything with ``nbytes``, ``last_used`` and ``close()``) by id, bounded in
    bytes; thread-safe."""

    def __init__(self, budget: int | None = None, ttl_s: float = 1800.0, idle_s: float = IDLE_S):
        self.budget = budget_bytes() if budget is None else budget
        self.ttl_s, self.idle_s = ttl_s, idle_s
        self._sessions: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def used(self) -> int:
        """Bytes the stored sessions hold, as last accounted."""
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def get(self, key: str | None):
        """The session stored under ``key`` (marked as used now), or None."""
        if not key:
            return None
        self.expire()
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                session.last_used = time.monotonic()
            return session

    def put(self, key: str, session) -> None:
        """Store ``session`` under ``key`` (it holds something now)."""
        with self._lock:
            self._sessions[key] = session
            self._sessions.move_to_end(key)
            session.last_used = time.monotonic()

    def make_room(self, session, need: int) -> None:
        """Make ``need`` more bytes available to ``session``: drop other sessions idle for at
        least ``idle_s``, least recently used first, while the total would exceed the budget.

        Raises:
            ServerFull: the budget is still exceeded; nothing was dropped.
        """
        now = time.monotonic()
        with self._lock:
            free = self.budget - sum(s.nbytes for s in self._sessions.values()) - need
            if free >= 0:
                return
            victims = []
            for key, other in self._sessions.items():
                if free >= 0:
                    break
                if other is not session and now - other.last_used >= self.idle_s:
                    victims.append(key)
                    free += other.nbytes
            if free < 0:
                raise ServerFull(
                    "The server is full: other visitors' results take all the memory it has "
                    "for them. Please try again in a few minutes."
                )
            dropped = [self._sessions.pop(key) for key in victims]
        for other in dropped:
            other.close(evicted=True)
        log.info("dropped %d idle sessions to make room for a fit", len(dropped))

    def expire(self) -> int:
        """Drop sessions idle for longer than ``ttl_s``; returns how many."""
        now = time.monotonic()
        with self._lock:
            old = [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s]
            dropped = [self._sessions.pop(k) for k in old]
        for session in dropped:
            session.close()
        return len(dropped)

    def discard(self, session) -> None:
        """Forget ``session`` (closed by its owner)."""
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s is session]:
                del self._sessions[key]
