"""The in-memory broker's state machine: route, deliver, settle, expire, dead-letter.

Every method runs under one re-entrant lock and never awaits, so any thread or event loop may
call it; consumptions are woken thread-safely. Semantics follow RabbitMQ 3.x: topic routing,
per-queue ``x-message-ttl`` (expiring at the head of the queue), ``x-dead-letter-exchange`` /
``x-dead-letter-routing-key`` on expiry and on ``reject(requeue=False)``, ``x-death`` headers
(times as UTC datetimes, as the AMQP client reads them), a requeued message back in its
original place with ``redelivered``, quorum queues' ``x-delivery-count``, round-robin between
competing consumers, declarations applied one by one (a clash leaves the earlier ones), and
consumers of a deleted queue consuming again once it is declared again (as eventyard's RabbitMQ
consumers do). Declaring is in ``declaring``, the ``x-death`` record in ``deaths``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from eventyard.errors import BrokerError, ConfigurationError, QueueNotFoundError
from eventyard.memory.clock import Clock, VirtualClock
from eventyard.memory.deaths import is_expired, with_death
from eventyard.memory.routing import Exchange, Queue, Stored

if TYPE_CHECKING:
    from eventyard.memory.consumption import MemoryConsumption, MemoryDelivery

logger = logging.getLogger(__name__)


class BrokerState:
    """Exchanges, queues and consumptions of one in-memory broker."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.consumptions: set[MemoryConsumption] = set()
        self.listeners: list[Any] = []  # callables run on every change (idle waiters)
        # Consumptions of a deleted queue, by its name: they consume again once it is back.
        self.orphans: dict[str, list[MemoryConsumption]] = {}
        self._jumping = False
        self._tags = 0
        self._positions = itertools.count()

    # -- queues -----------------------------------------------------------------------------
    def add_queue(self, queue: Queue) -> None:
        """Add a declared ``queue``; consumers of an earlier queue of its name consume again."""
        with self.lock:
            self.queues[queue.name] = queue
            for consumption in self.orphans.pop(queue.name, []):
                if not consumption.cancelled:  # its queue is back: it consumes again
                    queue.consumers.append(consumption)
                    logger.warning("queue %s declared again; its consumer consumes again",
                                   queue.name)

    def remove_queue(self, name: str) -> None:
        """Drop queue ``name`` and its messages; its consumers wait for it to come back."""
        with self.lock:
            queue = self.queues.pop(name, None)
            for consumption in list(queue.consumers) if queue else []:
                # RabbitMQ cancels the consumers of a deleted queue; eventyard's consumer
                # then waits for the queue to be declared again and consumes it again.
                queue.consumers.remove(consumption)  # type: ignore[union-attr]
                self.release(consumption, seen_too=False)  # buffered ones go with the queue
                self.orphans.setdefault(name, []).append(consumption)

    # -- publishing and routing ------------------------------------------------------------
    def publish(self, messages: Sequence[Stored]) -> list[int]:
        """Route every message (as the client delivered it to the broker); return the indexes
        of those that reached no queue."""
        with self.lock:
            for message in messages:
                if message.exchange and message.exchange not in self.exchanges:
                    raise ConfigurationError(
                        f"exchange {message.exchange!r} not found; run the configurer first")
            unroutable = [index for index, message in enumerate(messages)
                          if not self._route(message.exchange, message.routing_key, message)]
            self.changed()
            return unroutable

    def _route(self, exchange_name: str, routing_key: str, stored: Stored) -> int:
        if not exchange_name:  # the default exchange: straight to the queue named by the key
            names = [routing_key] if routing_key in self.queues else []
        else:
            names = self.exchanges[exchange_name].route(routing_key)
        for name in names:
            self._enqueue(self.queues[name], stored.copy())
        return len(names)

    def _enqueue(self, queue: Queue, stored: Stored) -> None:
        ttl = queue.ttl_seconds
        if ttl is not None:
            stored.expires_at = self._now(queue) + ttl
            self._expire_at(queue, stored.expires_at)
        stored.position = next(self._positions)
        queue.ready.append(stored)
        self._dispatch(queue)

    def _now(self, queue: Queue) -> float:
        """The time ``queue``'s TTL counts in: a retry or delay queue's may be skipped."""
        return self.clock.now() if queue.delays else self.clock.aged()

    def _expire_at(self, queue: Queue, when: float) -> None:
        name = queue.name
        self.clock.call_at(when, lambda: self.expire(name), skippable=queue.delays)

    def _dead_letter(self, queue: Queue, stored: Stored, reason: str) -> None:
        exchange_name = queue.dead_letter_exchange
        if exchange_name is None:
            logger.debug("message %s %s from %s and dropped (no dead-letter exchange)",
                         stored.message_id, reason, queue.name)
            return
        key = str(queue.arguments.get("x-dead-letter-routing-key", stored.routing_key))
        if exchange_name not in self.exchanges:
            logger.warning("dead-letter exchange %s of %s does not exist: message %s dropped",
                           exchange_name, queue.name, stored.message_id)
            return
        moved = replace(stored, exchange=exchange_name, routing_key=key,
                        headers=with_death(stored, queue.name, reason), redelivered=False,
                        expires_at=None, delivery_count=0)
        if not self._route(exchange_name, key, moved):
            logger.warning("dead letter of %s (key %s) reached no queue: message %s dropped",
                           queue.name, key, stored.message_id)

    def expire(self, queue_name: str) -> None:
        """Dead-letter the expired messages at the head of ``queue_name`` (a timer fired)."""
        with self.lock:
            queue = self.queues.get(queue_name)
            if queue is None or not queue.ready:
                return
            now = self._now(queue)
            expired = False
            while queue.ready and is_expired(queue.ready[0], now):
                self._dead_letter(queue, queue.ready.popleft(), "expired")
                expired = True
            head = queue.ready[0] if queue.ready else None
            if not expired and head is not None and head.expires_at is not None:
                # The timer fired a hair early: look again when the head is really due.
                self._expire_at(queue, head.expires_at)
            if expired:
                self.changed()

    # -- delivering ------------------------------------------------------------------------
    def _dispatch(self, queue: Queue) -> None:
        now = self._now(queue)
        while queue.ready and queue.consumers:
            if is_expired(queue.ready[0], now):
                self._dead_letter(queue, queue.ready.popleft(), "expired")
                continue
            consumption = self._next_consumer(queue)
            if consumption is None:
                return
            self._tags += 1
            stored = queue.ready.popleft()
            if queue.quorum:  # a quorum queue tells how often a message was handed back
                stored = replace(stored, headers={**stored.headers,
                                                  "x-delivery-count": stored.delivery_count})
            consumption.give(stored, self._tags)

    def _next_consumer(self, queue: Queue) -> MemoryConsumption | None:
        count = len(queue.consumers)
        for step in range(count):
            candidate = queue.consumers[(queue.next_consumer + step) % count]
            if not candidate.cancelled and candidate.capacity() > 0:
                queue.next_consumer = (queue.next_consumer + step + 1) % count
                return candidate  # type: ignore[no-any-return]
        return None

    def add_consumption(self, consumption: MemoryConsumption) -> None:
        """Start delivering ``consumption.queue`` to ``consumption``."""
        with self.lock:
            queue = self.queues.get(consumption.queue)
            if queue is None:
                raise QueueNotFoundError(
                    f"queue {consumption.queue!r} not found; run the configurer "
                    "(configure_subscribers) before consuming")
            queue.consumers.append(consumption)
            self.consumptions.add(consumption)
            self._dispatch(queue)

    def remove_consumption(self, consumption: MemoryConsumption, *, release_all: bool) -> None:
        """Stop delivering to ``consumption``; buffered (or, with ``release_all``, all) go back."""
        with self.lock:
            queue = self.queues.get(consumption.queue)
            if queue is not None and consumption in queue.consumers:
                queue.consumers.remove(consumption)
            waiting = self.orphans.get(consumption.queue, [])
            if consumption in waiting:
                waiting.remove(consumption)
            self.consumptions.discard(consumption)
            self.release(consumption, seen_too=release_all)

    def release(self, consumption: MemoryConsumption, *, seen_too: bool) -> None:
        """Put ``consumption``'s unacked deliveries back in their queue, where they were."""
        with self.lock:
            back = [d for d in consumption.unacked.values() if seen_too or not d.seen]
            for delivery in back:
                del consumption.unacked[delivery.tag]
                delivery.state = "returned"
            consumption.buffer.clear()
            queue = self.queues.get(consumption.queue)
            if queue is not None and back:
                self._requeue(queue, [d.stored for d in back])
                self._dispatch(queue)
            self.changed()


    def _requeue(self, queue: Queue, items: list[Stored]) -> None:
        """Hand ``items`` back to ``queue``: redelivered, as RabbitMQ marks every message it
        delivered (the consumer's callback saw it or not) and got back."""
        keep: list[Stored] = []
        for stored in items:
            # A new copy: the old delivery keeps showing what it was given.
            stored = replace(stored, redelivered=True, delivery_count=stored.delivery_count + 1)
            limit = queue.delivery_limit
            if limit is not None and stored.delivery_count > limit:
                self._dead_letter(queue, stored, "delivery_limit")
            else:
                keep.append(stored)
        queue.put_back(keep)

    def settle(self, delivery: MemoryDelivery, *, ack: bool, requeue: bool) -> None:
        """Ack, requeue or dead-letter one delivery."""
        with self.lock:
            consumption = delivery.consumption
            if delivery.state == "returned":
                # As on RabbitMQ: the connection it came on is gone, the message is back in its
                # queue and will be delivered again; settling it now is a no-op.
                logger.debug("delivery %s from %s came on a lost connection; it will be redelivered",
                             delivery.tag, delivery.queue)
                return
            if delivery.state == "settled" or delivery.tag not in consumption.unacked:
                raise BrokerError(f"delivery {delivery.tag} from {delivery.queue!r} was already "
                                  "acked or rejected")
            del consumption.unacked[delivery.tag]
            delivery.state = "settled"
            queue = self.queues.get(delivery.queue)
            if queue is not None and not ack:
                if requeue:
                    self._requeue(queue, [delivery.stored])
                else:
                    self._dead_letter(queue, delivery.stored, "rejected")
            if queue is not None:
                self._dispatch(queue)
            self.changed()

    # -- quiet, idle and the virtual clock --------------------------------------------------
    def is_quiet(self) -> bool:
        """Nothing is moving: no unacked delivery, no ready message on a consumed queue."""
        with self.lock:
            if any(c.unacked for c in self.consumptions):
                return False
            return not any(q.ready and any(not c.cancelled for c in q.consumers)
                           for q in self.queues.values())

    def timers_pending(self) -> int:
        """Messages waiting in a retry or delay queue (the waits a jump may skip)."""
        with self.lock:
            return sum(len(q.ready) for q in self.queues.values()
                       if q.delays and q.ttl_seconds is not None)

    def is_idle(self) -> bool:
        """Quiet, and no message waits for a TTL that passes by itself: nothing will happen.

        On a ``VirtualClock`` a main queue's TTL passes only by ``advance()``.
        """
        with self.lock:
            if not self.is_quiet() or self.timers_pending():
                return False
            return isinstance(self.clock, VirtualClock) or not any(
                q.ready and q.ttl_seconds is not None for q in self.queues.values())

    def changed(self) -> None:
        """Wake whoever waits on the broker; with an autojump clock, skip dead time."""
        with self.lock:
            for listener in list(self.listeners):
                listener()
            if not self.clock.autojump or self._jumping:
                return
            self._jumping = True
            try:
                while self.is_quiet() and self.timers_pending() and self.clock.jump():
                    pass
            finally:
                self._jumping = False
