"""Leaving ``TopologyOptions.petisco()`` for the default layout, while messages keep coming.

The steps are the ones docs/migrating-from-petisco.md gives: a queue declared with petisco's
5 s main-queue TTL cannot be declared again without it, so it is emptied into its dead-letter
queue (which holds new arrivals meanwhile), deleted, declared by the default layout and refilled
with ``eventyard-rabbitmq --requeue``. A publisher runs all along; nothing may be lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import aiormq
import pytest

from eventyard import (
    Command,
    DomainEvent,
    MessageSubscriber,
    TopologyMismatchError,
    TopologyOptions,
    UnroutableError,
    Uuid,
)
from eventyard.rabbitmq import RabbitMqDomainEventBus
from interop.conftest import Interop
from interop.sides import Events, Runs, yard_handler
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq


class AccountOpened(DomainEvent):
    """The event published all along."""

    account_id: Uuid


class CloseAccount(Command):
    """A command nobody handles."""

    account_id: Uuid


async def bind(url: str, queue: str, bindings: Sequence[tuple[str, str]], unbind: bool = False) -> None:
    """The doc's helper: bind (or unbind) ``queue`` to each (exchange, routing key)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for exchange, routing_key in bindings:
            if unbind:
                await channel.queue_unbind(queue, exchange, routing_key=routing_key)
            else:
                await channel.queue_bind(queue, exchange, routing_key=routing_key)
    finally:
        await connection.close()


async def delete_if_empty(url: str, queue: str) -> None:
    """Delete ``queue`` only if it holds no message (``rabbitmqctl delete_queue --if-empty``)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue, if_empty=True)
    finally:
        await connection.close()


class Publisher(threading.Thread):
    """Publishes one event every few milliseconds until stopped; remembers their ids."""

    def __init__(self, bus: RabbitMqDomainEventBus) -> None:
        super().__init__(name="publisher", daemon=True)
        self.bus = bus
        self.ids: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.01):
            event = AccountOpened(account_id=Uuid.v4())
            self.bus.publish(event)
            self.ids.append(event.get_message_id())


def test_leaving_the_preset_loses_nothing(interop: Interop) -> None:
    org, svc = interop.organization, interop.service
    store = f"store.{org}"  # not the vhost-wide `store`: this organisation's own
    runs, events = Runs(), Events()
    subscribers = [MessageSubscriber.from_message(AccountOpened, [yard_handler("open_ledger", runs)]),
                   MessageSubscriber.all_messages([yard_handler("keep", runs)])]
    preset = interop.yard(TopologyOptions.petisco(retry_ttl_ms=200, store_queue=store))
    preset.configure(subscribers)
    old = preset.consume(subscribers, 5, events)
    ledger = f"{org}.{svc}.1.event.account_opened.open_ledger"
    assert interop.inspector.queues(ledger)[ledger]["x-message-ttl"] == 5000
    preset.dispatch(CloseAccount(account_id=Uuid.v4()))  # the preset's store takes any command
    # Until the store has moved, the default layout cannot declare it (petisco's store has a TTL).
    with pytest.raises(TopologyMismatchError, match=f"queue '{store}'"):
        interop.yard(TopologyOptions(retry_ttl_ms=200, store_queue=store)).configure([])

    publisher = Publisher(RabbitMqDomainEventBus(preset.connector, org, svc))
    publisher.start()
    wait_until(lambda: len(publisher.ids) >= 20, 10, "the publisher to get going")

    # 1-2. Hold: each queue's dead-letter queue takes over all of its bindings.
    held = {queue: sorted({(e, k) for e, q, k in interop.inspector.bindings(queue) if q == queue})
            for queue in (ledger, store)}
    windows = [len(publisher.ids)]
    for queue, bindings in held.items():
        asyncio.run(bind(interop.url, f"dead_letter.{queue}", bindings))
        asyncio.run(bind(interop.url, queue, bindings, unbind=True))
    windows.append(len(publisher.ids))
    # 3. Stop the old consumers; what is left in the queues expires into their dead-letter queues.
    preset.stop(old)
    wait_until(lambda: interop.inspector.count(ledger) == interop.inspector.count(store) == 0,
               15, "the main-queue TTL to empty the queues")
    # 4. Delete them (only if empty).
    for queue in (ledger, store):
        asyncio.run(delete_if_empty(interop.url, queue))
    # 5. The default layout's configurer declares them anew (and binds them).
    default = interop.yard(TopologyOptions(retry_ttl_ms=200, store_queue=store))
    windows.append(len(publisher.ids))
    default.configure(subscribers)
    # 6. Release the dead-letter queues.
    for queue, bindings in held.items():
        asyncio.run(bind(interop.url, f"dead_letter.{queue}", bindings, unbind=True))
    windows.append(len(publisher.ids))
    # 7. Start the service on the default layout; 8. send back what the dead-letter queues held.
    default.consume(subscribers, 5, events)
    for queue in (ledger, store):
        interop.requeue(f"dead_letter.{queue}", "--store-queue", store)

    wait_until(lambda: len(publisher.ids) >= 40, 10, "more events after the switch")
    publisher.halt.set()
    publisher.join(10)
    published = set(publisher.ids)
    wait_until(lambda: published <= set(runs.of("open_ledger")) and published <= set(runs.of("keep")),
               20, "every event in both handlers")
    assert len(published) == len(publisher.ids) >= 40
    # Only a message published while both a queue and its dead-letter queue were bound (between
    # steps 1 and 2, 5 and 6) reaches both: at least once, never lost. (+1: the one in flight.)
    both = {*publisher.ids[windows[0]:windows[1] + 1], *publisher.ids[windows[2]:windows[3] + 1]}
    for handler in ("open_ledger", "keep"):
        twice = {mid for mid, n in runs.of(handler).items() if n > 1}
        assert twice <= both and max(runs.of(handler).values()) <= 2, (handler, len(twice))
    assert not events.of("dead_lettered") and not events.of("poison")
    queues = interop.inspector.queues(org)
    assert "x-message-ttl" not in queues[ledger] and "x-message-ttl" not in queues[store]
    assert queues[f"dead_letter.{ledger}"] == {"durable": True}
    assert interop.inspector.count(f"dead_letter.{ledger}") == interop.inspector.count(
        f"dead_letter.{store}") == 0
    # The default layout's store takes a command only through its subscriber.
    with pytest.raises(UnroutableError):
        default.dispatch(CloseAccount(account_id=Uuid.v4()))
