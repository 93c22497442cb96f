"""The outbox table on PostgreSQL through SQLAlchemy: rows added to the caller's session."""

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

from eventyard.ports import OutgoingMessage

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


def add_rows(session: Session | AsyncSession, kind: str, messages: Sequence[OutgoingMessage]) -> None:
    """Add ``messages`` to ``session`` (written when it flushes, kept only if it commits)."""
    # An AsyncSession's add_all is synchronous too: one function serves both APIs.
    session.add_all([OutboxRow(kind, message) for message in messages])


def is_session(session: object) -> bool:
    return isinstance(session, Session | AsyncSession)


async def pending_count(bind: AsyncEngine | AsyncConnection) -> int:
    """How many stored messages wait for the relay."""
    query = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
    if isinstance(bind, AsyncEngine):
        async with bind.connect() as connection:
            return int((await connection.execute(query)).scalar_one())
    return int((await bind.execute(query)).scalar_one())
