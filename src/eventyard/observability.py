"""Observability: log lines, correlation and causation, and the switch of the instruments.

Nothing is configured on import. Every logger is under ``eventyard``; each outcome of a delivery
is one line that carries, beside its text, the fields ``queue``, ``message_name``,
``message_id``, ``correlation_id`` and ``attempt`` (``JsonFormatter`` writes them out).

Correlation and causation: while a handler runs, the message it handles is in a context
variable; a message published then (on either API, from the handler's task, thread or the sync
bus's loop) inherits its correlation id and gets its id as causation id, in the meta (where
petisco keeps what travels with a message) and in the AMQP ``correlation_id`` property.

Instruments (OpenTelemetry spans and metrics, Prometheus metrics) are off unless one is
available; the hot paths read ``INSTRUMENTS.active`` once and do nothing more when it is None.
"""

from __future__ import annotations

import contextvars
import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from eventyard.errors import ConfigurationError

if TYPE_CHECKING:
    from eventyard.messages import Message
    from eventyard.ports import Delivery, OutgoingMessage
    from eventyard.subscribers import Outcome

CORRELATION_ID = "correlation_id"
CAUSATION_ID = "causation_id"
OPENTELEMETRY_ENV = "EVENTYARD_OPENTELEMETRY"  # auto (default) | on | off
LOG_FIELDS = ("queue", "message_name", "message_id", "correlation_id", "attempt")

# -- correlation and causation ------------------------------------------------------------------

HANDLING: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "eventyard_handling", default=None)
"""The message whose handler is running in this context (None outside handlers)."""


def handled_message() -> Message | None:
    """The message whose handler is running here, or None outside any handler."""
    return HANDLING.get()


def stamp(message: Message) -> str:
    """Give ``message`` the correlation and causation of the message being handled here (if
    any, and unless it carries its own); return its correlation id."""
    private = message.__pydantic_private__ or {}  # read at once: pydantic's lookup is slow
    handled = HANDLING.get()
    if handled is None:
        own = private.get("_message_id")
        if not private.get("_meta") and own is not None:
            return str(own)  # the usual case: a first message, nothing to read
        return message.get_correlation_id()
    meta = private["_meta"]  # its own dict, changed in place
    info = meta.get("info_id")
    if CORRELATION_ID not in meta and not (isinstance(info, dict) and info.get(CORRELATION_ID)):
        meta[CORRELATION_ID] = handled.get_correlation_id()
    if CAUSATION_ID not in meta:
        meta[CAUSATION_ID] = handled.get_message_id()
    return message.get_correlation_id()


# -- log lines ---------------------------------------------------------------------------------

def fields(queue: str, message: Message | None, attempt: int, *, message_id: str | None = None,
           correlation_id: str | None = None, **more: Any) -> dict[str, Any]:
    """The structured fields of a log line about one delivery (``extra=`` of the call)."""
    if message is not None:
        message_id = message.get_message_id()
        correlation_id = message.get_correlation_id()
    return {"queue": queue, "message_name": message.get_message_name() if message else None,
            "message_id": message_id, "correlation_id": correlation_id, "attempt": attempt,
            **more}


_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields given with
    ``extra=`` (queue, message_name, message_id, correlation_id, attempt, ...) and the
    exception, if any, as text."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(level: str | int = "info", *, json_lines: bool = False,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr) as text or JSON lines, for scripts and the CLI.

    Replaces the root logger's handlers with one. ``level`` applies to eventyard's loggers;
    other libraries log at WARNING and above (lower when ``level`` is lower than that is not
    asked of them: an AMQP client's debug output is seldom what an operator wants).
    """
    number = _level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=max(number, logging.WARNING), handlers=[handler], force=True)
    logging.getLogger("eventyard").setLevel(number)
    return handler


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.strip().lower() in LEVELS:
        return int(logging.getLevelName(level.strip().upper()))
    raise ConfigurationError(f"log level {level!r} is not one of {', '.join(LEVELS)}")


# -- instruments ---------------------------------------------------------------------------------

class Sending(Protocol):
    """The instruments' view of one publish (one message or a batch)."""

    def end(self, error: BaseException | None) -> None:
        """The broker confirmed every message (``error`` None), or the publish raised ``error``."""


class Processing(Protocol):
    """The instruments' view of one delivery's handler run."""

    def enter(self) -> object:
        """Make the run's span current in this context; return a token for ``leave``."""

    def leave(self, token: object) -> None:
        """Undo ``enter``."""

    def end(self, outcome: Outcome, retried: bool | None) -> None:
        """The handlers came to ``outcome``; the message will be retried (True),
        dead-lettered (False), or neither (None)."""


class Instruments(Protocol):
    """What buses and consumers tell the instruments (spans and metrics)."""

    def sending(self, messages: Sequence[OutgoingMessage]) -> Sending | None:
        """Start the ``send`` of ``messages``; their headers get the trace context."""

    def processing(self, delivery: Delivery, message: Message | None,
                   attempt: int) -> Processing | None:
        """Start the ``process`` of ``delivery`` (decoded as ``message``; None: poison)."""

    def settled(self, queue: str, error_type: str, retried: bool) -> None:
        """A failed message's copy went to the retry (``retried``) or dead-letter queue."""


class _Switch:
    """Which instruments are active; the hot paths read ``active`` and stop at None."""

    __slots__ = ("active", "opentelemetry", "providers", "resolved", "sinks")

    def __init__(self) -> None:
        self.active: Instruments | None = None
        self.opentelemetry: bool | None = None  # None: as EVENTYARD_OPENTELEMETRY says
        self.providers: tuple[Any, Any] = (None, None)  # tracer, meter (None: the global one)
        self.resolved = False
        self.sinks: list[Any] = []  # metric sinks besides OpenTelemetry (Prometheus)


INSTRUMENTS = _Switch()


def use_opentelemetry(enabled: bool | None = True, *, tracer_provider: Any = None,
                      meter_provider: Any = None) -> None:
    """Turn eventyard's OpenTelemetry spans and metrics on (True) or off (False) in this
    process, or back to the default (None).

    By default they are on when ``opentelemetry-api`` is installed (the ``otel`` extra), unless
    ``EVENTYARD_OPENTELEMETRY=off``; they go to the global tracer and meter providers, and
    nothing is recorded (no trace context put in headers) until the application sets one up.
    ``tracer_provider`` and ``meter_provider`` replace the global ones for eventyard.
    ``ConfigurationError`` when asked for without the package.
    """
    INSTRUMENTS.opentelemetry = enabled
    INSTRUMENTS.providers = (tracer_provider, meter_provider)
    INSTRUMENTS.resolved = False
    instrument()


def instrument() -> Instruments | None:
    """The active instruments, decided on first use (buses and consumers call this)."""
    if INSTRUMENTS.resolved:
        return INSTRUMENTS.active
    wanted = INSTRUMENTS.opentelemetry
    if wanted is None:
        setting = os.environ.get(OPENTELEMETRY_ENV, "").strip().lower() or "auto"
        if setting not in _SETTINGS:
            raise ConfigurationError(f"{OPENTELEMETRY_ENV}={setting!r} is not auto, on or off")
        wanted = _SETTINGS[setting]
    opentelemetry: Any = None
    if wanted is not False:
        try:
            otel = importlib.import_module("eventyard.otel")
        except ConfigurationError:
            if wanted:
                raise
        else:
            opentelemetry = otel.OpenTelemetry(*INSTRUMENTS.providers)
    from eventyard.telemetry import combine

    INSTRUMENTS.active = combine(opentelemetry, INSTRUMENTS.sinks)
    INSTRUMENTS.resolved = True
    return INSTRUMENTS.active


_SETTINGS: dict[str, bool | None] = {"auto": None, "on": True, "true": True, "1": True,
                                     "off": False, "false": False, "0": False}


def add_metric_sink(sink: Any) -> None:
    """Record eventyard's metrics in ``sink`` too (``eventyard.prometheus`` adds its own)."""
    if sink not in INSTRUMENTS.sinks:
        INSTRUMENTS.sinks.append(sink)
    INSTRUMENTS.resolved = False
    instrument()


def remove_metric_sink(sink: Any) -> None:
    """Record nothing more in ``sink``."""
    if sink in INSTRUMENTS.sinks:
        INSTRUMENTS.sinks.remove(sink)
    INSTRUMENTS.resolved = False
    instrument()


def header_text(headers: Mapping[str, Any], key: str) -> str | None:
    """A header as text (the AMQP client may hand over bytes), or None."""
    value = headers.get(key)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None
