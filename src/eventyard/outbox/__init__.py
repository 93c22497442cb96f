"""Transactional outbox and idempotent inbox: on PostgreSQL (extra ``outbox``) or SQLite.

``Outbox.publish(session, events)`` stores messages in the application's own transaction;
``OutboxRelay`` (PostgreSQL) or ``SqliteOutboxRelay`` publishes them after commit.
``idempotent(sessions)`` makes a handler run at most once per message id. See docs/outbox.md.

The SQLite store (stdlib ``sqlite3``) needs no extra; the PostgreSQL names need SQLAlchemy,
asyncpg and psycopg, and say how to install them when they are missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eventyard.errors import ConfigurationError
from eventyard.outbox.api import INSTALL, Outbox, idempotent
from eventyard.outbox.base import RelaySettings, current_session
from eventyard.outbox.sqlite import SqliteOutboxStore
from eventyard.outbox.sqlite_relay import SqliteOutboxRelay

if TYPE_CHECKING:
    from eventyard.outbox.inbox import purge_inbox
    from eventyard.outbox.relay import OutboxRelay
    from eventyard.outbox.schema import apply_schema, apply_schema_async, schema_sql
    from eventyard.outbox.store import pending_count

_POSTGRESQL = {
    "OutboxRelay": "eventyard.outbox.relay",
    "apply_schema": "eventyard.outbox.schema",
    "apply_schema_async": "eventyard.outbox.schema",
    "schema_sql": "eventyard.outbox.schema",
    "pending_count": "eventyard.outbox.store",
    "purge_inbox": "eventyard.outbox.inbox",
}


def __getattr__(name: str) -> Any:
    module = _POSTGRESQL.get(name)
    if module is None:
        raise AttributeError(f"module 'eventyard.outbox' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as error:  # the extra is not installed: say how to get it
        raise ConfigurationError(
            f"eventyard.outbox.{name} (PostgreSQL) needs {error.name or 'SQLAlchemy'}: {INSTALL}"
        ) from error


__all__ = [
    "Outbox",
    "OutboxRelay",
    "RelaySettings",
    "SqliteOutboxRelay",
    "SqliteOutboxStore",
    "apply_schema",
    "apply_schema_async",
    "current_session",
    "idempotent",
    "pending_count",
    "purge_inbox",
    "schema_sql",
]
