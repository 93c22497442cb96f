"""Storing messages in the application's transaction: the ``Outbox`` and its table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, registry

from eventyard import naming
from eventyard.errors import ConfigurationError
from eventyard.messages import Command, DomainEvent, Message
from eventyard.ports import OutgoingMessage
from eventyard.publishing import as_list, outgoing

metadata = MetaData()
"""eventyard's own tables (schema.sql creates them; this only describes them)."""

outbox_table = Table(
    "eventyard_outbox", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("txid", BigInteger, server_default=func.txid_current(), nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("kind", Text, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("routing_key", Text, nullable=False),
    Column("message_id", Text),
    Column("message_type", Text),
    Column("correlation_id", Text),
    Column("headers", JSONB, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("timestamp_s", BigInteger),
    Column("sent_at", DateTime(timezone=True)),
)


class OutboxRow:
    """One stored message (mapped to ``eventyard_outbox``; added to the caller's session)."""

    def __init__(self, kind: str, message: OutgoingMessage) -> None:
        self.kind = kind
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.message_id = message.message_id
        self.message_type = message.type
        self.correlation_id = message.correlation_id
        self.headers = dict(message.headers)
        self.body = message.body
        self.timestamp_s = message.timestamp


registry().map_imperatively(OutboxRow, outbox_table)


class Outbox:
    """Stores a service's events and commands in the caller's database transaction.

    ``publish``/``dispatch`` add rows to a SQLAlchemy ``Session`` or ``AsyncSession``: they are
    written when the session flushes and exist only if its transaction commits. An
    ``OutboxRelay`` publishes them afterwards, in the order they were stored.
    """

    def __init__(self, organization: str, service: str) -> None:
        self.organization = naming.check_word(organization, "organization")
        self.service = naming.check_word(service, "service")

    def publish(self, session: Session | AsyncSession, events: DomainEvent | Sequence[DomainEvent]) -> None:
        """Store one event or a list of them in ``session``'s transaction."""
        self._store(session, "event", as_list(events, DomainEvent))

    def dispatch(self, session: Session | AsyncSession, commands: Command | Sequence[Command]) -> None:
        """Store one command or a list of them in ``session``'s transaction."""
        self._store(session, "command", as_list(commands, Command))

    def _store(self, session: Session | AsyncSession, kind: str, messages: list[Message]) -> None:
        if not isinstance(session, Session | AsyncSession):
            raise ConfigurationError(
                f"Outbox needs a SQLAlchemy Session or AsyncSession, got {type(session).__name__}")
        rows = [OutboxRow(kind, outgoing(self.organization, self.service, m)) for m in messages]
        # An AsyncSession's add_all is synchronous too: one method serves both APIs.
        session.add_all(rows)


async def pending_count(bind: AsyncEngine | AsyncConnection) -> int:
    """How many stored messages wait for the relay."""
    query = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
    if isinstance(bind, AsyncEngine):
        async with bind.connect() as connection:
            return int((await connection.execute(query)).scalar_one())
    return int((await bind.execute(query)).scalar_one())
