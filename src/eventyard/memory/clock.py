"""Clocks for the in-memory broker's message TTLs (the retry delay).

``RealClock`` waits for real: the choice for a long-running in-memory application.
``VirtualClock`` moves only when told (``advance``) or, with ``autojump``, whenever the broker
has nothing else to do: a 5 s retry delay then passes instantly and deterministically, which is
what tests and demos want.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

from eventyard.engine import LoopThread

TimerCallback = Callable[[], None]


class Clock(Protocol):
    """Tells the time and runs callbacks once a time is reached."""

    @property
    def autojump(self) -> bool:
        """True when the broker may jump to the next timer whenever it is quiet."""

    def now(self) -> float:
        """The current time in seconds (monotonic)."""

    def call_at(self, when: float, callback: TimerCallback) -> None:
        """Run ``callback`` once ``now() >= when`` (on any thread; it must be thread-safe)."""

    def jump(self) -> bool:
        """Move to the next timer and fire it; False if there is none (or time is real)."""


class RealClock:
    """Wall-clock time; timers run on the broker's event loop thread."""

    def __init__(self, loop_thread: LoopThread) -> None:
        self._loop_thread = loop_thread

    @property
    def autojump(self) -> bool:
        """Never: real time cannot be skipped."""
        return False

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def call_at(self, when: float, callback: TimerCallback) -> None:
        """Schedule ``callback`` on the broker's loop, ``when - now()`` seconds from now."""
        loop = self._loop_thread.loop
        delay = max(0.0, when - self.now())
        loop.call_soon_threadsafe(loop.call_later, delay, callback)

    def jump(self) -> bool:
        """Real time does not jump."""
        return False


class VirtualClock:
    """Time that moves only by ``advance()``, or by the broker when ``autojump`` is on.

    Thread-safe. Callbacks run on the thread that moves the clock, outside the clock's lock.
    """

    def __init__(self, *, autojump: bool = True, start: float = 0.0) -> None:
        self._autojump = autojump
        self._now = start
        self._timers: list[tuple[float, int, TimerCallback]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    @property
    def autojump(self) -> bool:
        """True when the broker jumps to the next timer whenever it is quiet."""
        return self._autojump

    def now(self) -> float:
        """The virtual time in seconds."""
        with self._lock:
            return self._now

    def call_at(self, when: float, callback: TimerCallback) -> None:
        """Run ``callback`` once the virtual time reaches ``when``."""
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._sequence), callback))

    def pending(self) -> int:
        """How many timers have not fired yet."""
        with self._lock:
            return len(self._timers)

    def next_deadline(self) -> float | None:
        """When the next timer is due, or None."""
        with self._lock:
            return self._timers[0][0] if self._timers else None

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, firing every timer due on the way; return how many."""
        if seconds < 0:
            raise ValueError(f"time cannot go back ({seconds} s)")
        with self._lock:
            target = self._now + seconds
        fired = 0
        while self._fire_next(target):
            fired += 1
        with self._lock:
            self._now = max(self._now, target)
        return fired

    def jump(self) -> bool:
        """Move to the next timer and fire it; False if there is none."""
        deadline = self.next_deadline()
        return deadline is not None and self._fire_next(deadline)

    def _fire_next(self, limit: float) -> bool:
        with self._lock:
            if not self._timers or self._timers[0][0] > limit:
                return False
            when, _, callback = heapq.heappop(self._timers)
            self._now = max(self._now, when)
        callback()
        return True
