"""``Outbox`` and ``idempotent``: one API over both stores (PostgreSQL through SQLAlchemy, SQLite).

This module imports no database library: SQLAlchemy is imported only when a SQLAlchemy session
or sessionmaker is used, so the SQLite store needs no extra.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from eventyard import naming
from eventyard.errors import ConfigurationError
from eventyard.messages import Command, DomainEvent, Message
from eventyard.outbox.sqlite import SqliteOutboxStore, add_rows
from eventyard.outbox.sqlite_inbox import idempotent_sqlite
from eventyard.publishing import as_list, outgoing

F = TypeVar("F", bound=Callable[..., Any])

INSTALL = "install eventyard[outbox] (pip install 'eventyard[outbox]')"


class Outbox:
    """Stores a service's events and commands in the caller's database transaction.

    ``publish``/``dispatch`` take a SQLAlchemy ``Session`` or ``AsyncSession`` (PostgreSQL):
    the rows are written when it flushes; or a ``sqlite3.Connection`` of a
    ``SqliteOutboxStore`` in a transaction: the rows are inserted now. Either way they exist
    only if the transaction commits; a relay publishes them afterwards, in the order stored.
    """

    def __init__(self, organization: str, service: str) -> None:
        self.organization = naming.check_word(organization, "organization")
        self.service = naming.check_word(service, "service")

    def publish(self, session: Any, events: DomainEvent | Sequence[DomainEvent]) -> None:
        """Store one event or a list of them in ``session``'s transaction."""
        self._store(session, "event", as_list(events, DomainEvent))

    def dispatch(self, session: Any, commands: Command | Sequence[Command]) -> None:
        """Store one command or a list of them in ``session``'s transaction."""
        self._store(session, "command", as_list(commands, Command))

    def _store(self, session: Any, kind: str, messages: list[Message]) -> None:
        if isinstance(session, sqlite3.Connection):
            add_rows(session, kind, self._encoded(messages))
            return
        try:
            from eventyard.outbox import store
        except ModuleNotFoundError:
            store = None  # type: ignore[assignment]
        if store is None or not store.is_session(session):
            raise ConfigurationError(
                "Outbox needs a SQLAlchemy Session or AsyncSession (PostgreSQL; "
                f"{INSTALL}) or a sqlite3.Connection, got {type(session).__name__}")
        store.add_rows(session, kind, self._encoded(messages))

    def _encoded(self, messages: list[Message]) -> list[Any]:
        return [outgoing(self.organization, self.service, m) for m in messages]


def idempotent(sessions: Any, *, name: str | None = None) -> Callable[[F], F]:
    """Run the decorated handler at most once per message id (successful runs only count).

    ``sessions``: a ``sessionmaker`` (sync handler) or an ``async_sessionmaker`` (``async def``
    handler) over PostgreSQL, or a ``SqliteOutboxStore`` (either kind of handler). ``name``
    identifies the handler in the inbox (default: its module and qualified name); keep it
    stable across deployments.
    """
    if isinstance(sessions, SqliteOutboxStore):
        return idempotent_sqlite(sessions, name=name)
    try:
        from eventyard.outbox.inbox import idempotent as idempotent_sqlalchemy
    except ModuleNotFoundError as error:
        raise ConfigurationError(f"idempotent(sessionmaker) needs {error.name}: {INSTALL}; "
                                 "or pass a SqliteOutboxStore") from error
    return idempotent_sqlalchemy(sessions, name=name)
