"""The relay: publishes committed outbox rows through a ``Transport`` and marks them sent.

One batch is one database transaction: lock pending rows (``FOR UPDATE SKIP LOCKED``, so
several relays share the work), publish them and wait for the broker's confirms, stamp
``sent_at``, commit. A relay killed between the confirms and the commit leaves its rows
pending: the next batch publishes them again (at-least-once; an idempotent handler absorbs
the copy). A committed transaction's NOTIFY wakes the relay; a slow poll covers a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventyard.errors import ConfigurationError
from eventyard.outbox.base import RelaySettings, Stored, send_batch
from eventyard.outbox.inbox import purge_inbox
from eventyard.ports import OutgoingMessage, TransportSource

__all__ = ["CHANNEL", "OutboxRelay", "RelaySettings"]

logger = logging.getLogger(__name__)

CHANNEL = "eventyard_outbox"
"""The LISTEN/NOTIFY channel schema.sql's trigger notifies."""

_LOCK_BATCH = text(
    "SELECT id, txid, kind, exchange, routing_key, message_id, message_type, correlation_id, "
    "headers, body, timestamp_s FROM eventyard_outbox WHERE sent_at IS NULL "
    "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
# The pending rows of the batch's transactions up to the batch's last row: a relay publishes,
# of each transaction, only its rows that come first among these with no row missing between
# them (another relay holds the missing ones), so one transaction's messages keep their order.
_PENDING_OF = text(
    "SELECT txid, id FROM eventyard_outbox WHERE sent_at IS NULL AND txid = ANY(:txids) "
    "AND id <= :last ORDER BY id"
)
_MARK_SENT = text("UPDATE eventyard_outbox SET sent_at = now() WHERE id = ANY(:ids)")
_DELETE_SENT = text(
    "DELETE FROM eventyard_outbox WHERE id IN (SELECT id FROM eventyard_outbox WHERE sent_at < "
    "now() - make_interval(secs => :age) LIMIT :limit)"
)


class OutboxRelay:
    """Publishes what ``Outbox`` stored, after commit, with the broker's confirms.

    ``transports`` gives the transport to publish with (``connector.publisher_transport`` of a
    ``RabbitMqConnector`` or a ``MemoryBroker``). Run it with ``await relay.run()`` (until
    ``stop()``), or ``start()`` it as a task beside a consumer. Create the engine with
    ``pool_pre_ping=True``: after a database restart, pooled connections are dead.
    """

    def __init__(self, engine: AsyncEngine, transports: TransportSource,
                 settings: RelaySettings | None = None) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError("OutboxRelay needs a SQLAlchemy AsyncEngine "
                                     "(create_async_engine('postgresql+asyncpg://...'))")
        self.engine = engine
        self.transports = transports
        self.settings = settings or RelaySettings()
        self.published = 0  # messages this relay published (copies after a crash included)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._held = False  # the last batch left rows to a relay holding earlier ones
        self._listening = False
        self._failures = 0  # in a row: the next retry's delay doubles with each
        self.failures = 0  # failed batches and lost connections, in all

    async def relay_once(self) -> int:
        """Publish one batch of pending messages; return how many were published."""
        self._held = False
        async with self.engine.begin() as connection:
            rows = (await connection.execute(_LOCK_BATCH, {"limit": self.settings.batch_size})).all()
            if not rows:
                return 0
            rows = await self._in_order(connection, rows)
            if not rows:
                return 0
            batch = [_outgoing(row) for row in rows]
            await self._publish(rows, batch)
            await connection.execute(_MARK_SENT, {"ids": [row.id for row in rows]})
        self.published += len(rows)
        return len(rows)

    async def _in_order(self, connection: AsyncConnection, rows: Sequence[Any]) -> list[Any]:
        mine: dict[int, list[int]] = {}
        for row in rows:
            mine.setdefault(row.txid, []).append(row.id)
        result = await connection.execute(_PENDING_OF, {"txids": list(mine), "last": rows[-1].id})
        pending: dict[int, list[int]] = {}
        for txid, row_id in result.all():
            pending.setdefault(int(txid), []).append(int(row_id))
        ready: set[int] = set()
        for txid, ids in mine.items():
            # The longest run of this relay's rows that starts at the transaction's first pending.
            for held, first in zip(ids, pending.get(txid, []), strict=False):
                if held != first:
                    break
                ready.add(held)
        self._held = len(ready) < len(rows)
        return [row for row in rows if row.id in ready]

    async def _publish(self, rows: Sequence[Any], batch: list[OutgoingMessage]) -> None:
        await send_batch(self.transports, batch,
                         [Stored(row.kind, row.message_type, row.routing_key) for row in rows])

    async def cleanup(self) -> int:
        """Delete sent rows older than the retention period; return how many went."""
        deleted = 0
        while True:
            async with self.engine.begin() as connection:
                result = await connection.execute(
                    _DELETE_SENT, {"age": float(self.settings.retention), "limit": 10_000})
            count = int(getattr(result, "rowcount", 0) or 0)
            deleted += count
            if count < 10_000:
                return deleted

    def wake(self) -> None:
        """Look for pending messages now (as a NOTIFY does)."""
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

    async def run(self) -> None:
        """Relay until ``stop()``: after each NOTIFY, each poll interval, and at start."""
        while not self._stop.is_set():
            try:
                await self._listen_and_relay()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # database or broker gone: wait, then start over
                delay = self.settings.retry_after(self._failures)
                self._failures += 1
                self.failures += 1
                logger.warning("outbox relay: %s: %s; retrying in %.2f s", type(error).__name__,
                               error, delay)
                await self._sleep(delay)

    async def _listen_and_relay(self) -> None:
        async with self.engine.connect() as listening:
            raw = await listening.get_raw_connection()
            driver: Any = raw.driver_connection

            def notified(*_: Any) -> None:
                self._wake.set()

            def terminated(*_: Any) -> None:
                self._listening = False
                self._wake.set()

            await driver.add_listener(CHANNEL, notified)
            driver.add_termination_listener(terminated)
            self._listening = True
            try:
                await self._loop()
            finally:
                with contextlib.suppress(Exception):
                    driver.remove_termination_listener(terminated)
                    await driver.remove_listener(CHANNEL, notified)
                if not self._listening:  # never back into the pool
                    with contextlib.suppress(Exception):
                        await listening.invalidate()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time()
        while not self._stop.is_set():
            if not self._listening:  # no NOTIFY would come: listen again on a new connection
                raise ConnectionError("the connection listening for NOTIFY was lost")
            self._wake.clear()  # before the batch: a NOTIFY during it means look again
            while not self._stop.is_set() and await self.relay_once() > 0:
                pass
            self._failures = 0
            if loop.time() >= next_cleanup:
                deleted = await self.cleanup()
                if deleted:
                    logger.info("outbox relay: deleted %d sent rows", deleted)
                if self.settings.inbox_window is not None:
                    expired = await purge_inbox(self.engine, self.settings.inbox_window)
                    if expired:
                        logger.info("outbox relay: deleted %d expired inbox rows", expired)
                next_cleanup = loop.time() + self.settings.cleanup_interval
            # Rows left to another relay come free at its commit, which notifies nobody.
            await self._sleep(min(0.05, self.settings.poll_interval) if self._held
                              else self.settings.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


def _outgoing(row: Any) -> OutgoingMessage:
    return OutgoingMessage(
        exchange=row.exchange, routing_key=row.routing_key, body=bytes(row.body),
        headers=dict(row.headers or {}), message_id=row.message_id, type=row.message_type,
        timestamp=row.timestamp_s, correlation_id=row.correlation_id,
    )
