"""The contract suite's RabbitMQ: the test broker, watched at the backend's ports and inspected
over AMQP.

Knowing that nothing is in flight needs the unacked count of every queue, which AMQP does not
give (and the management API only samples every few seconds). The consumers' side of it is
exact, though: every delivery goes through a transport's ``consume`` callback and ends in one
``ack`` or ``reject`` (or in the close of its connection, which hands it back). ``Watched``
wraps the connector to count those, and to learn the queues the test declares and consumes;
the broker's side (ready messages, consumers) comes from passive declares.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiormq

from eventyard.buses import Broker
from eventyard.engine import LoopThread
from eventyard.ports import Consumption, Delivery, DeliveryCallback, OutgoingMessage, Transport
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.topology import Topology
from support.broker import RabbitBroker

# How long the counts must stay the same, with nothing in flight, before the broker is called
# settled: it covers a message the broker moves between queues (a retry's TTL running out) or
# has sent but the client has not read yet, both far shorter.
QUIET_SECONDS = 0.15
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class PeekedMessage:
    """A message read off a queue and left there."""

    body: bytes
    headers: Mapping[str, Any]


class _Ledger:
    """Deliveries handed to consumers and those settled since, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered = 0
        self.settled = 0
        self.queues: set[str] = set()

    def add(self, *, delivered: int = 0, settled: int = 0) -> None:
        with self._lock:
            self.delivered += delivered
            self.settled += settled

    def learn(self, queues: Sequence[str]) -> None:
        with self._lock:
            self.queues.update(queues)

    def state(self) -> tuple[int, int, frozenset[str]]:
        with self._lock:
            return self.delivered, self.settled, frozenset(self.queues)


class _CountedDelivery:
    """A delivery whose ack or reject is counted once (the rest is the real delivery's)."""

    def __init__(self, inner: Delivery, on_settled: Any) -> None:
        self._inner = inner
        self._on_settled = on_settled
        self._settled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _done(self) -> None:
        if not self._settled:
            self._settled = True
            self._on_settled()

    async def ack(self) -> None:
        try:
            await self._inner.ack()
        finally:
            self._done()

    async def reject(self, *, requeue: bool) -> None:
        try:
            await self._inner.reject(requeue=requeue)
        finally:
            self._done()


class _WatchedTransport:
    """A transport that reports to a ledger what it declares, consumes and settles."""

    def __init__(self, inner: Transport, ledger: _Ledger) -> None:
        self._inner = inner
        self._ledger = ledger
        self._open = 0  # deliveries of this connection not settled yet
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # frame_max and the like

    async def declare(self, topology: Topology) -> None:
        self._ledger.learn([queue.name for queue in topology.queues])
        await self._inner.declare(topology)

    async def delete(self, topology: Topology) -> None:
        await self._inner.delete(topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        return await self._inner.publish(messages)

    def _settled(self) -> None:
        with self._lock:
            self._open -= 1
        self._ledger.add(settled=1)

    async def consume(self, queue: str, callback: DeliveryCallback, *,
                      prefetch: int) -> Consumption:
        self._ledger.learn([queue])

        async def counted(delivery: Delivery) -> None:
            with self._lock:
                self._open += 1
            self._ledger.add(delivered=1)
            await callback(_CountedDelivery(delivery, self._settled))

        return await self._inner.consume(queue, counted, prefetch=prefetch)

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            # What was not settled goes back to its queue with the connection.
            with self._lock:
                returned, self._open = self._open, 0
            self._ledger.add(settled=returned)


class Watched:
    """A connector whose transports report to a ledger; anything else is the connector's."""

    def __init__(self, inner: RabbitMqConnector) -> None:
        self.inner = inner
        self.ledger = _Ledger()
        self._publishers: dict[int, _WatchedTransport] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: no recursion through it
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def loop_thread(self) -> LoopThread:
        """The connector's loop."""
        return self.inner.loop_thread

    async def publisher_transport(self) -> Transport:
        """The connector's shared publisher transport, watched."""
        inner = await self.inner.publisher_transport()
        watched = self._publishers.get(id(inner))
        if watched is None or watched._inner is not inner:
            watched = self._publishers[id(inner)] = _WatchedTransport(inner, self.ledger)
        return watched

    async def consumer_transport(self) -> Transport:
        """A new consumer transport, watched."""
        return _WatchedTransport(await self.inner.consumer_transport(), self.ledger)


class RabbitUnderTest:
    """RabbitMQ for the contract suite."""

    name = "rabbitmq"

    def __init__(self, rabbit: RabbitBroker) -> None:
        self.rabbit = rabbit
        self.connector = RabbitMqConnector(rabbit.url)
        self.watched = Watched(self.connector)
        self.backend: Broker = self.watched
        self._inspection: aiormq.abc.AbstractConnection | None = None

    def _run(self, coro: Any) -> Any:
        return self.connector.loop_thread.run(coro)

    async def _states(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Queue -> (ready, consumers) by passive declares; a missing queue is left out."""
        if self._inspection is None or self._inspection.is_closed:
            self._inspection = await aiormq.connect(self.rabbit.url)
        states: dict[str, tuple[int, int]] = {}
        channel = await self._inspection.channel()
        try:
            for queue in queues:
                try:
                    ok = await channel.queue_declare(queue, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await self._inspection.channel()  # the broker closed that one
                    continue
                states[queue] = (int(ok.message_count or 0), int(ok.consumer_count or 0))
        finally:
            if not channel.is_closed:
                await channel.close()
        return states

    def queue_counts(self, queues: Sequence[str]) -> dict[str, int]:
        states = self._run(self._states(queues))
        return {queue: states.get(queue, (0, 0))[0] for queue in queues}

    def messages_in(self, queue: str) -> list[PeekedMessage]:
        return asyncio.run(self._peek(queue))

    async def _peek(self, queue: str) -> list[PeekedMessage]:
        # Get without acking, then close: RabbitMQ puts them back where they were.
        connection = await aiormq.connect(self.rabbit.url)
        peeked: list[PeekedMessage] = []
        try:
            channel = await connection.channel()
            while True:
                message = await channel.basic_get(queue, no_ack=False)
                if message.delivery_tag is None or not hasattr(message.delivery, "routing_key"):
                    break
                peeked.append(PeekedMessage(bytes(message.body),
                                            dict(message.header.properties.headers or {})))
        finally:
            await connection.close()
        return peeked

    def settle(self, timeout: float, organization: str) -> None:
        """Wait until no delivery is unsettled, no retry waits, no consumed queue has messages
        ready, and all of it has stayed so for ``QUIET_SECONDS``.

        ``organization`` is not needed: the queues are the ones the test declared or consumed.
        """
        deadline = time.monotonic() + timeout
        previous: object = None
        quiet_since = time.monotonic()
        while True:
            delivered, settled, queues = self.watched.ledger.state()
            states = self._run(self._states(sorted(queues)))
            busy = [f"{delivered - settled} deliveries unsettled"] if delivered != settled else []
            busy += [f"{queue}: {ready} ready" for queue, (ready, consumers) in sorted(states.items())
                     if ready and (consumers or queue.startswith("retry."))]
            now = time.monotonic()
            current = (delivered, settled, states)
            if busy or current != previous:
                quiet_since = now
            elif now - quiet_since >= QUIET_SECONDS:
                return
            if now > deadline:
                raise AssertionError(f"RabbitMQ did not settle in {timeout}s: "
                                     f"{', '.join(busy) or 'counts still changing'}")
            previous = current
            time.sleep(POLL_SECONDS)  # polling the broker's counts with a deadline

    def close(self) -> None:
        try:
            if self._inspection is not None and not self._inspection.is_closed:
                self._run(self._inspection.close())
        finally:
            self.connector.close()
