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
from sqlalchemy.ext.asyncio import AsyncEngine

from eventyard.errors import ConfigurationError
from eventyard.outbox.base import RelaySettings, RelayTask, Stored, send_batch
from eventyard.outbox.inbox import purge_inbox
from eventyard.ports import OutgoingMessage, TransportSource

__all__ = ["CHANNEL", "OutboxRelay", "RelaySettings"]

logger = logging.getLogger(__name__)

CHANNEL = "eventyard_outbox"
"""The LISTEN/NOTIFY channel schema.sql's trigger notifies."""

# One round trip: lock up to :limit pending rows (another relay skips them), and for each of
# their transactions the first pending row up to the batch's last that is *not* in the batch
# (another relay holds it). A relay publishes, of each transaction, only its rows before that
# one, so one transaction's messages keep their order; the rest wait for the other's commit.
_LOCK_BATCH = text(
    "WITH batch AS MATERIALIZED (SELECT id, txid, kind, exchange, routing_key, message_id, "
    "message_type, correlation_id, headers, body, timestamp_s FROM eventyard_outbox "
    "WHERE sent_at IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED), "
    "missing AS (SELECT o.txid, min(o.id) AS first_missing FROM eventyard_outbox o "
    "WHERE o.sent_at IS NULL AND o.txid IN (SELECT txid FROM batch) "
    "AND o.id <= (SELECT max(id) FROM batch) AND o.id NOT IN (SELECT id FROM batch) "
    "GROUP BY o.txid) "
    "SELECT batch.*, missing.first_missing FROM batch LEFT JOIN missing USING (txid) "
    "ORDER BY batch.id"
)
_MARK_SENT = text("UPDATE eventyard_outbox SET sent_at = now() WHERE id = ANY(:ids)")
_DELETE_SENT = text(
    "DELETE FROM eventyard_outbox WHERE id IN (SELECT id FROM eventyard_outbox WHERE sent_at < "
    "now() - make_interval(secs => :age) LIMIT :limit)"
)


class OutboxRelay(RelayTask):
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
        super().__init__()
        self.transports = transports
        self.settings = settings or RelaySettings()
        self.published = 0  # messages this relay published (copies after a crash included)
        self._held = False  # the last batch left rows to a relay holding earlier ones
        self._listening = False
        self._failures = 0  # in a row: the next retry's delay doubles with each
        self.failures = 0  # failed batches and lost connections, in all

    async def relay_once(self) -> int:
        """Publish one batch of pending messages; return how many were published."""
        _, published, self._held = await self._batch()
        return published

    async def _batch(self, locking: asyncio.Future[int] | None = None) -> tuple[int, int, bool]:
        """One batch: (rows locked, rows published, rows left to a relay holding earlier ones).
        ``locking`` gets the number of rows locked as soon as they are."""
        async with self.engine.begin() as connection:
            locked = (await connection.execute(_LOCK_BATCH,
                                               {"limit": self.settings.batch_size})).all()
            if locking is not None:
                locking.set_result(len(locked))
            rows = [row for row in locked
                    if row.first_missing is None or row.id < row.first_missing]
            if rows:
                await self._publish(rows, [_outgoing(row) for row in rows])
                await connection.execute(_MARK_SENT, {"ids": [row.id for row in rows]})
        self.published += len(rows)
        return len(locked), len(rows), len(rows) < len(locked)

    async def _drain(self) -> None:
        """Batches until one is not full, up to ``in_flight`` at a time: once a batch has locked
        a full load of rows, or a NOTIFY comes while it is out, the next batch is read and
        published while the broker confirms the first."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Task[tuple[int, int, bool]], bool] = {}  # task -> had company
        woken: asyncio.Task[bool] | None = None
        more, self._held = True, False
        try:
            while running or (more and not self._stop.is_set()):
                if more and not self._stop.is_set() and len(running) < self.settings.in_flight:
                    self._wake.clear()  # this batch sees what was committed before it locks
                    locking: asyncio.Future[int] = loop.create_future()
                    task = asyncio.ensure_future(self._batch(locking))
                    running[task] = bool(running)
                    either: list[asyncio.Future[Any]] = [locking, task]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    more = locking.done() and locking.result() >= self.settings.batch_size
                    locking.cancel()  # (if it failed before locking: raised below)
                    continue
                if woken is None:
                    woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait([*running, woken], return_when=asyncio.FIRST_COMPLETED)
                if woken in done:  # committed while batches are out: another one
                    self._wake.clear()  # consumed (else a stop() would spin this loop)
                    more, woken = True, None
                for task in running.keys() & done:
                    had_company = running.pop(task)
                    _, _, held = task.result()  # a failed batch raises here
                    if held and (had_company or running):
                        more = True  # rows held by this relay's own batch: free at its commit
                    elif held:
                        self._held = True  # held by another relay: look again soon
        finally:
            for pending in (*running, *([woken] if woken else [])):
                pending.cancel()
            if running:
                await asyncio.wait(running)

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
            await self._drain()
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


def _outgoing(row: Any) -> OutgoingMessage:
    return OutgoingMessage(
        exchange=row.exchange, routing_key=row.routing_key, body=bytes(row.body),
        headers=dict(row.headers or {}), message_id=row.message_id, type=row.message_type,
        timestamp=row.timestamp_s, correlation_id=row.correlation_id,
    )
