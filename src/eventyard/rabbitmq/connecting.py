"""Opening an AMQP connection: each fail-over host in turn, an error that says what is wrong.

What went wrong is told apart and explained in ``connection_problems`` (its names are
re-exported here); the password never shows. aiormq logs records of its own (an ERROR line, a
traceback) for a connection it could not open and for one that was closed or lost; eventyard
reports both itself, so on eventyard's connections those records are dropped (aiormq's other
records pass).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractConnection

from eventyard.rabbitmq.blocking_connection import handshake_refusal
from eventyard.rabbitmq.connection_problems import (
    HandshakeRefused,
    Problem,
    connection_error,
    explain,
    scrub,
)
from eventyard.rabbitmq.fastpaths import frame_streams
from eventyard.rabbitmq.framing import BrokerAlarm
from eventyard.rabbitmq.settings import ConnectionSettings

__all__ = ["HandshakeRefused", "Problem", "connection_error", "explain", "open_connection", "scrub"]

# Set while eventyard opens a connection. aiormq's tasks for that connection (its reader
# included) start inside the open and inherit it: it marks eventyard's connections.
_OURS: contextvars.ContextVar[bool] = contextvars.ContextVar("eventyard_connection",
                                                             default=False)
_REPORTED = ("error when creating transport", "Unexpected connection close from remote")
_LOST = "Cancelling cause reader exited abnormally"


class _ReportedByEventyard(logging.Filter):
    """Drops aiormq's records of failures eventyard reports itself, on its connections."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _OURS.get():
            return True
        text = str(record.msg)
        if record.levelno >= logging.ERROR and text.startswith(_REPORTED):
            return False
        # The reader's traceback when the connection was closed or lost (not when it broke).
        error = record.exc_info[1] if record.exc_info else None
        return not (text.startswith(_LOST) and isinstance(error, OSError))


logging.getLogger("aiormq.connection").addFilter(_ReportedByEventyard())


async def _diagnose_vhost(settings: ConnectionSettings, host: str, port: int) -> BaseException:
    """aiormq reports a refused vhost without the broker's words: ask again, on a plain socket."""
    refusal = await asyncio.to_thread(handshake_refusal, settings, host, port)
    return refusal or HandshakeRefused("vhost", 0, "")


async def open_connection(settings: ConnectionSettings, name: str,
                          alarm: BrokerAlarm | None = None) -> AbstractConnection:
    """A connection to the first host that answers; ``BrokerConnectionError`` if none does.

    Its socket is eventyard's ``FrameStream`` (see ``framing``); ``alarm`` follows what the
    broker says about blocking it.
    """
    problems = []
    streams = frame_streams(alarm or BrokerAlarm())
    context = settings.ssl_context()  # a bad CA or key file is a ConfigurationError, raised here
    for (host, port), entry in zip(settings.endpoints, settings.hosts, strict=True):
        extra: dict[str, Any] = (
            {"context": context, "server_hostname": settings.server_name(host)} if context else {})
        # The open runs as a task of its own in a context that marks it, so the caller's context
        # is never changed (a set and reset around an await can meet another context there).
        marked = contextvars.copy_context()
        marked.run(_OURS.set, True)
        opening = asyncio.get_running_loop().create_task(
            aiormq.connect(settings.url(entry, name=name), transport_factory=streams, **extra),
            context=marked)
        try:
            return await asyncio.wait_for(opening, settings.connect_timeout)
        except Exception as error:
            cause: BaseException = error
            if isinstance(error, amqp_errors.InvalidFrameError) and "Connection.OpenOk" in str(error):
                cause = await _diagnose_vhost(settings, host, port)
            problems.append(explain(cause, settings, host, port))
    raise connection_error(settings, problems)
