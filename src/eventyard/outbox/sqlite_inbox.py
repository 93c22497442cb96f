"""The idempotent inbox on the SQLite store: a handler's run and its record commit together.

As on PostgreSQL: the wrapper opens a connection, inserts (handler, message id) into
``eventyard_inbox`` (taking SQLite's write lock, so a second copy waits for the first) and
runs the handler with that connection as ``current_session()``; success commits both, failure
rolls both back; a copy whose row exists is acked without running the handler.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from eventyard.outbox.base import (
    handler_key,
    message_of,
    run_in_session,
    run_in_session_async,
    skipped,
)
from eventyard.outbox.sqlite import SqliteOutboxStore

F = TypeVar("F", bound=Callable[..., Any])

_CLAIM = ("INSERT OR IGNORE INTO eventyard_inbox (handler, message_id, handled_at) "
          "VALUES (?, ?, ?)")


def _claim(connection: sqlite3.Connection, key: str, message_id: str) -> bool:
    connection.execute("BEGIN IMMEDIATE")  # waits (up to the store's timeout) for another copy
    return connection.execute(_CLAIM, (key, message_id, time.time())).rowcount == 1


def idempotent_sqlite(store: SqliteOutboxStore, *, name: str | None = None) -> Callable[[F], F]:
    """``idempotent(store)`` for a ``SqliteOutboxStore`` (sync or ``async def`` handlers)."""

    def decorate(handler: F) -> F:
        key = handler_key(handler, name)

        if inspect.iscoroutinefunction(handler):
            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                message = message_of(args, key)
                connection = store.connect()
                try:
                    # On a thread: waiting for a copy in progress must not block the loop it runs on.
                    claimed = await asyncio.to_thread(_claim, connection, key,
                                                      str(message.get_message_id()))
                    if not claimed:
                        connection.rollback()
                        skipped(key, message)
                        return None
                    return await run_in_session_async(connection, handler, args, kwargs)
                finally:
                    connection.close()

            return run_async  # type: ignore[return-value]

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            message = message_of(args, key)
            connection = store.connect()
            try:
                if not _claim(connection, key, str(message.get_message_id())):
                    connection.rollback()
                    skipped(key, message)
                    return None
                return run_in_session(connection, handler, args, kwargs)
            finally:
                connection.close()

        return run  # type: ignore[return-value]

    return decorate
