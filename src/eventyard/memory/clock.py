"""Clocks for the in-memory broker's message TTLs.

Two kinds of TTL run on a clock: a retry or delay queue's (``retry.Q``: the wait before a
message comes back), which a test wants to skip, and every other queue's (a main queue's
``x-message-ttl``), which must not pass faster than on RabbitMQ. ``call_at(..., skippable=)``
tells them apart.

``RealClock`` waits for real: the choice for a long-running in-memory application.
``VirtualClock`` moves only when told (``advance``, which ages every queue) or, with
``autojump``, by jumping to the next retry or delay whenever the broker has nothing else to do:
a 5 s retry delay then passes instantly and deterministically, while a message waiting in a
main queue does not age by the skipped time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

from eventyard.engine import LoopThread
from eventyard.errors import ConfigurationError

TimerCallback = Callable[[], None]


class Clock(Protocol):
    """Tells the time and runs callbacks once a time is reached."""

    @property
    def autojump(self) -> bool:
        """True when the broker may jump to the next skippable timer whenever it is quiet."""

    def now(self) -> float:
        """The time retry and delay queues count in, seconds (monotonic)."""

    def aged(self) -> float:
        """The time other queues' TTLs count in: ``now()`` less the time jumps skipped."""

    def call_at(self, when: float, callback: TimerCallback, *, skippable: bool = True) -> None:
        """Run ``callback`` once ``now() >= when`` (a retry or delay: ``skippable``), else once
        ``aged() >= when``; on any thread, so it must be thread-safe."""

    def jump(self) -> bool:
        """Move to the next skippable timer and fire it; False if there is none (or time is real)."""


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

    def aged(self) -> float:
        """``time.monotonic()``: real time skips nothing."""
        return time.monotonic()

    def call_at(self, when: float, callback: TimerCallback, *, skippable: bool = True) -> None:
        """Schedule ``callback`` on the broker's loop, ``when - now()`` seconds from now."""
        loop = self._loop_thread.loop
        delay = max(0.0, when - self.now())
        loop.call_soon_threadsafe(loop.call_later, delay, callback)

    def jump(self) -> bool:
        """Real time does not jump."""
        return False


class VirtualClock:
    """Time that moves only by ``advance()``, or by the broker when ``autojump`` is on.

    A jump crosses the wait of a retry or delay queue only: ``aged()``, the time of every other
    TTL, moves by ``advance()`` alone. Thread-safe. Callbacks run on the thread that moves the
    clock, outside the clock's lock.
    """

    def __init__(self, *, autojump: bool = True, start: float = 0.0) -> None:
        self._autojump = autojump
        self._now = start
        self._skipped = 0.0
        self._timers: list[tuple[float, int, TimerCallback]] = []  # skippable, by now()
        self._aging: list[tuple[float, int, TimerCallback]] = []  # by aged()
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    @property
    def autojump(self) -> bool:
        """True when the broker jumps to the next retry or delay whenever it is quiet."""
        return self._autojump

    def now(self) -> float:
        """The virtual time of retry and delay queues, seconds."""
        with self._lock:
            return self._now

    def aged(self) -> float:
        """The virtual time of every other queue: ``now()`` less what jumps skipped."""
        with self._lock:
            return self._now - self._skipped

    def call_at(self, when: float, callback: TimerCallback, *, skippable: bool = True) -> None:
        """Run ``callback`` once ``now()`` (``skippable``) or ``aged()`` reaches ``when``."""
        with self._lock:
            heapq.heappush(self._timers if skippable else self._aging,
                           (when, next(self._sequence), callback))

    def pending(self) -> int:
        """How many timers have not fired yet."""
        with self._lock:
            return len(self._timers) + len(self._aging)

    def next_deadline(self) -> float | None:
        """When the next retry or delay is due (``now()`` time), or None."""
        with self._lock:
            return self._timers[0][0] if self._timers else None

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds`` for every queue, firing each timer due on the way
        (in time order); return how many fired."""
        if seconds < 0:
            raise ConfigurationError(f"time cannot go back ({seconds} s)")
        with self._lock:
            target = self._now + seconds
        fired = 0
        while self._fire_next(target, aging=True):
            fired += 1
        with self._lock:
            self._now = max(self._now, target)
        return fired

    def jump(self) -> bool:
        """Move to the next retry or delay and fire it; False if there is none.

        The time crossed counts as skipped: main queues' TTLs do not see it pass.
        """
        with self._lock:
            if not self._timers:
                return False
            deadline = self._timers[0][0]
            if deadline > self._now:
                self._skipped += deadline - self._now
                self._now = deadline
        return self._fire_next(deadline, aging=False)

    def _fire_next(self, limit: float, *, aging: bool) -> bool:
        """Fire the earliest timer due by ``limit`` (``now()`` time), if any."""
        with self._lock:
            due = self._timers[0][0] if self._timers else None
            aged_due = (self._aging[0][0] + self._skipped
                        if aging and self._aging else None)
            if aged_due is not None and (due is None or aged_due < due):
                if aged_due > limit:
                    return False
                _, _, callback = heapq.heappop(self._aging)
                self._now = max(self._now, aged_due)
            else:
                if due is None or due > limit:
                    return False
                _, _, callback = heapq.heappop(self._timers)
                self._now = max(self._now, due)
        callback()
        return True
