"""The outbox and inbox in SQLite (stdlib ``sqlite3``, no extra): for tests and demos.

``SqliteOutboxStore`` holds the tables in a database file (a temporary one by default). The
business code writes through a ``sqlite3.Connection`` in a transaction (``store.transaction()``
or its own ``BEGIN``/``commit``) and calls ``Outbox.publish(connection, event)``; a
``SqliteOutboxRelay`` publishes the committed rows. SQLite has one writer at a time, which
keeps one transaction's rows together and in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eventyard.errors import ConfigurationError
from eventyard.outbox.base import check_window
from eventyard.ports import OutgoingMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventyard_outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     REAL NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('event', 'command')),
    exchange       TEXT NOT NULL,
    routing_key    TEXT NOT NULL,
    message_id     TEXT,
    message_type   TEXT,
    correlation_id TEXT,
    headers        TEXT NOT NULL DEFAULT '{}',
    body           BLOB NOT NULL,
    timestamp_s    INTEGER,
    sent_at        REAL
);
CREATE INDEX IF NOT EXISTS eventyard_outbox_pending ON eventyard_outbox (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS eventyard_inbox (
    handler    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (handler, message_id)
);
CREATE INDEX IF NOT EXISTS eventyard_inbox_handled_at ON eventyard_inbox (handled_at);
"""

_INSERT = ("INSERT INTO eventyard_outbox (created_at, kind, exchange, routing_key, message_id, "
           "message_type, correlation_id, headers, body, timestamp_s) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
PENDING = ("SELECT id, kind, exchange, routing_key, message_id, message_type, correlation_id, "
           "headers, body, timestamp_s FROM eventyard_outbox WHERE sent_at IS NULL "
           "ORDER BY id LIMIT ?")


class SqliteOutboxStore:
    """The outbox and inbox tables in one SQLite database.

    ``path``: the database file (created if missing); None makes a temporary one, deleted by
    ``close()``. ``timeout``: seconds a connection waits for another's write to finish.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> None:
        self._directory = tempfile.mkdtemp(prefix="eventyard-outbox-") if path is None else None
        self.path = os.fspath(path) if path is not None else os.path.join(
            self._directory or "", "outbox.sqlite3")
        self.timeout = timeout
        self._listeners: list[Callable[[], None]] = []
        self.relay_lock = threading.Lock()  # one batch at a time per store (SQLite: one writer)
        with contextlib.closing(self.connect()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            connection.executescript(SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """A new connection (usable from any thread, one at a time). Python's default
        transaction handling: the first write begins a transaction; ``commit()`` ends it."""
        connection = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection in a write transaction: committed at the end of the block (then the
        relays are woken), rolled back if it raises."""
        connection = self.connect()
        try:
            connection.execute("BEGIN IMMEDIATE")  # the write lock now: no busy snapshot later
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
        finally:
            connection.close()
        self.notify()

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` after each ``transaction()`` commits; returns the function that stops it."""
        self._listeners.append(wake)
        return lambda: self._listeners.remove(wake) if wake in self._listeners else None

    def notify(self) -> None:
        """Wake the relays (as a commit of ``transaction()`` does)."""
        for wake in list(self._listeners):
            wake()

    def pending_count(self) -> int:
        """How many stored messages wait for the relay."""
        with contextlib.closing(self.connect()) as connection:
            row = connection.execute(
                "SELECT count(*) FROM eventyard_outbox WHERE sent_at IS NULL").fetchone()
        return int(row[0])

    def delete_sent(self, retention: float) -> int:
        """Delete rows sent more than ``retention`` seconds ago; return how many went."""
        return self._delete("DELETE FROM eventyard_outbox WHERE sent_at < ?", retention)

    def purge_inbox(self, window: float) -> int:
        """Delete inbox rows older than ``window`` seconds; return how many went."""
        return self._delete("DELETE FROM eventyard_inbox WHERE handled_at < ?", check_window(window))

    def _delete(self, sql: str, age: float) -> int:
        with contextlib.closing(self.connect()) as connection, connection:
            return int(connection.execute(sql, (time.time() - age,)).rowcount)

    def close(self) -> None:
        """Delete the temporary database (a file given by path stays)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> SqliteOutboxStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_rows(connection: sqlite3.Connection, kind: str, messages: Sequence[OutgoingMessage]) -> None:
    """Insert ``messages`` in ``connection``'s transaction (kept only if it commits)."""
    if connection.isolation_level is None and not connection.in_transaction:
        raise ConfigurationError("Outbox needs the sqlite3 connection in a transaction (autocommit "
                                 "would publish the message whatever happens next): BEGIN first")
    now = time.time()
    connection.executemany(_INSERT, [
        (now, kind, m.exchange, m.routing_key, m.message_id, m.type, m.correlation_id,
         json.dumps(dict(m.headers)), m.body, m.timestamp) for m in messages])


def outgoing_of(row: Any) -> OutgoingMessage:
    """The message a pending row (``PENDING``'s columns) stores."""
    (_, _, exchange, routing_key, message_id, message_type, correlation_id, headers, body,
     timestamp) = row
    return OutgoingMessage(exchange=exchange, routing_key=routing_key, body=bytes(body),
                           headers=json.loads(headers), message_id=message_id, type=message_type,
                           timestamp=timestamp, correlation_id=correlation_id)
