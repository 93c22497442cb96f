"""The relay of the SQLite store: publishes committed rows through a ``Transport``, marks them sent.

The same loop as PostgreSQL's relay, without LISTEN/NOTIFY: a commit through
``store.transaction()`` wakes it, and it polls every ``poll_interval`` for commits made
otherwise. Database work runs on a worker thread (SQLite blocks), and no lock is held while
the broker confirms, so the business code is never held up by the relay. The relays of one
store take batches one at a time; relays in several processes on one file are not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from eventyard.errors import ConfigurationError
from eventyard.outbox.base import RelaySettings, RelayTask, Stored, send_batch
from eventyard.outbox.sqlite import PENDING, SqliteOutboxStore, outgoing_of
from eventyard.ports import TransportSource

logger = logging.getLogger("eventyard.outbox.relay")


class SqliteOutboxRelay(RelayTask):
    """Publishes what ``Outbox`` stored in a ``SqliteOutboxStore``, after commit, with confirms.

    The same methods as ``OutboxRelay``: ``relay_once()``, ``start()``/``stop()``, ``run()``,
    ``wake()``, ``cleanup()``, and the ``published``/``failures`` counts.
    """

    def __init__(self, store: SqliteOutboxStore, transports: TransportSource,
                 settings: RelaySettings | None = None) -> None:
        if not isinstance(store, SqliteOutboxStore):
            raise ConfigurationError("SqliteOutboxRelay needs a SqliteOutboxStore")
        self.store = store
        super().__init__()
        self.transports = transports
        self.settings = settings or RelaySettings()
        self.published = 0
        self.failures = 0
        self._failures = 0
        self._held = False

    async def relay_once(self) -> int:
        """Publish one batch of pending messages; return how many were published."""
        if not self.store.relay_lock.acquire(blocking=False):
            self._held = True  # another relay of this store is in a batch: look again soon
            return 0
        self._held = False
        try:
            rows = await asyncio.to_thread(self._pending)
            if not rows:
                return 0
            await send_batch(self.transports, [outgoing_of(row) for row in rows],
                             [Stored(row[1], row[5], row[3]) for row in rows])
            await asyncio.to_thread(self._mark_sent, [row[0] for row in rows])
        finally:
            self.store.relay_lock.release()
        self.published += len(rows)
        return len(rows)

    def _pending(self) -> list[Any]:
        with contextlib.closing(self.store.connect()) as connection:
            return connection.execute(PENDING, (self.settings.batch_size,)).fetchall()

    def _mark_sent(self, ids: list[object]) -> None:
        with contextlib.closing(self.store.connect()) as connection, connection:
            connection.executemany("UPDATE eventyard_outbox SET sent_at = ? WHERE id = ?",
                                   [(time.time(), row_id) for row_id in ids])

    async def cleanup(self) -> int:
        """Delete sent rows older than the retention period; return how many went."""
        return await asyncio.to_thread(self.store.delete_sent, self.settings.retention)

    async def run(self) -> None:
        """Relay until ``stop()``: after each commit of ``store.transaction()``, each poll
        interval, and at start."""
        loop = asyncio.get_running_loop()

        def woken() -> None:  # a commit may come from another thread
            loop.call_soon_threadsafe(self._wake.set)

        unlisten = self.store.listen(woken)
        try:
            next_cleanup = loop.time()
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    while not self._stop.is_set() and await self.relay_once() > 0:
                        pass
                    if loop.time() >= next_cleanup:
                        await self._cleanup()
                        next_cleanup = loop.time() + self.settings.cleanup_interval
                except Exception as error:  # database locked, broker gone, a nack: wait, retry
                    delay = self.settings.retry_after(self._failures)
                    self._failures += 1
                    self.failures += 1
                    logger.warning("outbox relay: %s: %s; retrying in %.2f s",
                                   type(error).__name__, error, delay)
                    await self._sleep(delay)
                    continue
                self._failures = 0
                await self._sleep(min(0.05, self.settings.poll_interval) if self._held
                                  else self.settings.poll_interval)
        finally:
            unlisten()

    async def _cleanup(self) -> None:
        deleted = await self.cleanup()
        if deleted:
            logger.info("outbox relay: deleted %d sent rows", deleted)
        if self.settings.inbox_window is not None:
            expired = await asyncio.to_thread(self.store.purge_inbox, self.settings.inbox_window)
            if expired:
                logger.info("outbox relay: deleted %d expired inbox rows", expired)
