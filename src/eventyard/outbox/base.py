"""What every outbox store shares, with no database library: the relay's settings and its task,
publishing a batch, and the idempotent handler's session and message.

Nothing here imports SQLAlchemy, so the SQLite store (stdlib ``sqlite3``) works without the
``outbox`` extra.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventyard.errors import ConfigurationError
from eventyard.messages import Message
from eventyard.ports import OutgoingMessage, TransportSource
from eventyard.publishing import start_sending
from eventyard.subscribers import outcome_of

logger = logging.getLogger("eventyard.outbox.relay")


@dataclass(frozen=True, kw_only=True, slots=True)
class RelaySettings:
    """How a relay works: batch size, the fallback poll, and how long sent rows are kept."""

    batch_size: int = 500
    poll_interval: float = 5.0  # seconds between polls when no NOTIFY comes
    retention: float = 7 * 24 * 3600.0  # seconds a sent row is kept (for inspection)
    cleanup_interval: float = 60.0  # seconds between clean-ups of sent rows (and inbox rows)
    # Seconds an inbox row is kept (a copy arriving later runs its handler again); None: the
    # relay leaves the inbox alone.
    inbox_window: float | None = 7 * 24 * 3600.0
    retry_delay: float = 0.5  # first wait after a failed batch, doubling up to max_retry_delay
    max_retry_delay: float = 10.0
    # Batches at once (PostgreSQL): once one has locked a full batch, the next is read and
    # published while the broker confirms the first. 1: one batch after the other.
    in_flight: int = 2

    def __post_init__(self) -> None:
        if (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                or not 1 <= self.batch_size <= 100_000):
            raise ConfigurationError(f"batch_size must be 1..100000, got {self.batch_size!r}")
        if (isinstance(self.in_flight, bool) or not isinstance(self.in_flight, int)
                or not 1 <= self.in_flight <= 16):
            raise ConfigurationError(f"in_flight must be 1..16, got {self.in_flight!r}")
        for name in ("poll_interval", "retention", "cleanup_interval", "retry_delay",
                     "max_retry_delay", "inbox_window"):
            value = getattr(self, name)
            if value is None and name == "inbox_window":
                continue
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds, "
                                         f"got {value!r}")

    def retry_after(self, failures: int) -> float:
        """The wait after ``failures`` failed batches in a row (doubling, capped)."""
        return float(min(self.retry_delay * 2 ** min(failures, 30), self.max_retry_delay))


class RelayTask(abc.ABC):
    """A relay's life as a task: ``wake()`` it, ``start()`` it beside a consumer, ``stop()`` it
    after its current batch; ``run()`` is the relay's own loop."""

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run(self) -> None:
        """Relay until ``stop()``."""

    def wake(self) -> None:
        """Look for pending messages now."""
        self._wake.set()

    def start(self) -> asyncio.Task[None]:
        """Run the relay as a task of the running loop."""
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="outbox-relay")
        return self._task

    async def stop(self) -> None:
        """Stop the relay after its current batch."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken; not at all once stopping (a batch may have
        taken the wake a ``stop()`` gave)."""
        if self._stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the relay logs of a stored message that reached no queue."""

    kind: str
    message_type: str | None
    routing_key: str


async def send_batch(transports: TransportSource, batch: list[OutgoingMessage],
                     stored: Sequence[Stored]) -> None:
    """Publish ``batch`` and wait for the broker's confirms; log what reached no queue."""
    transport = await transports()
    sending = start_sending(batch)
    try:
        unroutable = await transport.publish(batch)
    except BaseException as error:
        if sending is not None:
            sending.end(error)
        raise
    if sending is not None:
        sending.end(None)
    for index in unroutable:
        row = stored[index]
        # Marked sent all the same: publishing it again would reach no queue either.
        log = logger.error if row.kind == "command" else logger.warning
        log("outbox %s %s (%s) reached no queue", row.kind, row.message_type, row.routing_key)


SESSION: contextvars.ContextVar[Any] = contextvars.ContextVar("eventyard_inbox_session",
                                                             default=None)


def run_in_session(session: Any, handler: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    """Run a sync handler with ``session`` as ``current_session()``: what it wrote (and the
    inbox row) commits when it succeeds, and rolls back when it fails or raises."""
    token = SESSION.set(session)
    try:
        result = handler(*args, **kwargs)
    except BaseException:
        session.rollback()
        raise
    finally:
        SESSION.reset(token)
    (session.commit if outcome_of(result).success else session.rollback)()
    return result


async def run_in_session_async(session: Any, handler: Callable[..., Any], args: tuple[Any, ...],
                               kwargs: dict[str, Any]) -> Any:
    """``run_in_session`` for an ``async def`` handler; ``session`` may be an async session
    (its commit and rollback awaited) or a sync connection (SQLite)."""
    token = SESSION.set(session)
    try:
        result = await handler(*args, **kwargs)
    except BaseException:
        await _done(session.rollback())
        raise
    finally:
        SESSION.reset(token)
    await _done((session.commit if outcome_of(result).success else session.rollback)())
    return result


async def _done(call: Any) -> None:
    """Await what an async session's method returned (a sync connection's returns None)."""
    if inspect.isawaitable(call):
        await call


def current_session() -> Any:
    """The session (or SQLite connection) of the idempotent handler running now: its writes
    commit with the handler's inbox record."""
    session = SESSION.get()
    if session is None:
        raise ConfigurationError("current_session() is only available inside a handler "
                                 "decorated with @idempotent(...)")
    return session


def handler_key(handler: Any, name: str | None) -> str:
    """The handler's name in the inbox (``name``, else its module and qualified name)."""
    key = name or f"{handler.__module__}.{handler.__qualname__}"
    if not isinstance(key, str) or not key or len(key) > 500:
        raise ConfigurationError(f"idempotent handler name must be 1..500 characters: {key!r}")
    return key


def message_of(args: tuple[Any, ...], key: str) -> Message:
    """The message a handler was called with (its last positional argument)."""
    message = args[-1] if args else None
    if not isinstance(message, Message):
        raise ConfigurationError(f"idempotent handler {key} was called without a message")
    return message


def skipped(key: str, message: Message) -> None:
    logging.getLogger("eventyard.outbox.inbox").info(
        "%s already handled %s %s: acked without running it", key, message.get_message_name(),
        message.get_message_id())


def check_window(window: float) -> float:
    if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
        raise ConfigurationError(f"inbox window must be a positive number of seconds, got {window!r}")
    return float(window)
