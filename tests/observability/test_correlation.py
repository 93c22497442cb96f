"""Correlation and causation: inherited from the message being handled, on both APIs and both
brokers, carried in the meta and in the AMQP ``correlation_id`` property, never in headers."""

from __future__ import annotations

import threading
from typing import Any

from contract.conftest import Yard
from eventyard import DomainEvent, InfoId, MessageSubscriber
from eventyard.observability import handled_message
from eventyard.publishing import AsyncDomainEventBus
from observability.conftest import take


class Ordered(DomainEvent):
    n: int


class Packed(DomainEvent):
    n: int


class Shipped(DomainEvent):
    n: int


class Seen:
    """What handlers saw, by message id, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, tuple[str, str | None]] = {}
        self.count = 0

    def add(self, event: DomainEvent) -> None:
        with self.lock:
            self.ids[event.get_message_id()] = (event.get_correlation_id(), event.get_causation_id())
            self.count += 1


def _chain(yard: Yard, *, async_api: bool) -> tuple[Ordered, Seen]:
    """Ordered -> (handler) two Packed as a list -> (handler) one Shipped each."""
    seen = Seen()
    bus = yard.event_bus()
    async_bus = AsyncDomainEventBus(yard.backend.publisher_transport, yard.organization,
                                    yard.service)

    def pack(event: Ordered) -> None:
        seen.add(event)
        bus.publish([Packed(n=event.n), Packed(n=event.n + 1)])

    def ship(event: Packed) -> None:
        seen.add(event)
        bus.publish(Shipped(n=event.n))

    async def pack_async(event: Ordered) -> None:
        seen.add(event)
        await async_bus.publish([Packed(n=event.n), Packed(n=event.n + 1)])

    async def ship_async(event: Packed) -> None:
        seen.add(event)
        await async_bus.publish(Shipped(n=event.n))

    def done(event: Shipped) -> None:
        seen.add(event)

    subscribers = [MessageSubscriber.from_message(Ordered, [pack_async if async_api else pack]),
                   MessageSubscriber.from_message(Packed, [ship_async if async_api else ship]),
                   MessageSubscriber.from_message(Shipped, [done])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    first = Ordered(n=1)
    bus.publish(first)
    yard.wait_until(lambda: seen.count == 5, what="the whole chain")
    return first, seen


def _check_chain(first: Ordered, seen: Seen) -> None:
    root = first.get_message_id()
    assert seen.ids[root] == (root, None)  # published outside any handler: its own conversation
    packed = [i for i, (_, cause) in seen.ids.items() if cause == root]
    assert len(packed) == 2
    shipped = [(i, cause) for i, (_, cause) in seen.ids.items() if cause in packed]
    assert sorted(cause for _, cause in shipped) == sorted(packed)
    assert {correlation for correlation, _ in seen.ids.values()} == {root}


def test_sync_handlers_publishing_on_the_sync_bus_pass_the_conversation_on(yard: Yard) -> None:
    _check_chain(*_chain(yard, async_api=False))


def test_async_handlers_publishing_on_the_async_bus_pass_the_conversation_on(yard: Yard) -> None:
    _check_chain(*_chain(yard, async_api=True))


def test_the_ids_travel_in_the_meta_and_the_correlation_id_property_not_in_headers(
        yard: Yard) -> None:
    bus = yard.event_bus()

    def pack(event: Ordered) -> None:
        bus.publish(Packed(n=event.n))

    def not_started(event: Packed) -> None:
        raise AssertionError("nobody consumes this queue")

    subscribers = [MessageSubscriber.from_message(Ordered, [pack])]
    yard.configure([*subscribers, MessageSubscriber.from_message(Packed, [not_started])])
    yard.consumer(subscribers)
    first = Ordered(n=1)
    bus.publish(first)
    [packed] = take(yard, yard.queue_of(Packed, not_started))

    root = first.get_message_id()
    assert packed.correlation_id == root
    assert packed.meta == {"correlation_id": root, "causation_id": root}
    # petisco 2.2.3 loses the retry of a message with headers but no `queue` header: none here.
    assert packed.headers == {}


def test_a_first_message_is_its_own_correlation_and_its_body_is_unchanged(yard: Yard) -> None:
    def not_started(event: Ordered) -> None:
        raise AssertionError("nobody consumes this queue")

    yard.configure([MessageSubscriber.from_message(Ordered, [not_started])])
    first = Ordered(n=1)
    yard.event_bus().publish(first)
    [taken] = take(yard, yard.queue_of(Ordered, not_started))

    assert taken.correlation_id == taken.message_id == first.get_message_id()
    assert taken.meta == {} and taken.headers == {}


def test_an_info_id_s_correlation_id_is_the_conversation(yard: Yard) -> None:
    bus = yard.event_bus()
    seen = Seen()

    def pack(event: Ordered) -> None:
        seen.add(event)
        bus.publish(Packed(n=event.n))

    def packed(event: Packed) -> None:
        seen.add(event)

    subscribers = [MessageSubscriber.from_message(Ordered, [pack]),
                   MessageSubscriber.from_message(Packed, [packed])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    first = Ordered(n=1).add_info_id(InfoId(correlation_id="request-42", user_id="u1"))
    bus.publish(first)
    yard.wait_until(lambda: seen.count == 2)

    assert {correlation for correlation, _ in seen.ids.values()} == {"request-42"}
    assert {cause for _, cause in seen.ids.values()} == {None, first.get_message_id()}


def test_a_dead_letter_keeps_its_correlation_id_property(yard: Yard) -> None:
    bus = yard.event_bus()
    calls: list[Any] = []

    def pack(event: Ordered) -> None:
        bus.publish(Packed(n=event.n))

    def refuse(event: Packed) -> None:
        calls.append((event.get_correlation_id(), handled_message() is event))
        raise ValueError("no")

    subscribers = [MessageSubscriber.from_message(Ordered, [pack]),
                   MessageSubscriber.from_message(Packed, [refuse])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=1)
    first = Ordered(n=1)
    bus.publish(first)
    yard.wait_until(lambda: len(yard.recorder.events("dead_lettered")) == 1)
    [letter] = take(yard, "dead_letter." + yard.queue_of(Packed, refuse))

    root = first.get_message_id()
    assert calls == [(root, True), (root, True)]  # the retry too
    assert letter.correlation_id == root and letter.meta["causation_id"] == root


def test_hostile_ids_in_the_meta_are_ignored(memory_yard: Yard) -> None:
    seen = Seen()

    def record(event: Ordered) -> None:
        seen.add(event)

    subscribers = [MessageSubscriber.from_message(Ordered, [record])]
    memory_yard.configure(subscribers)
    memory_yard.consumer(subscribers)
    odd = [Ordered(n=1).with_meta({"correlation_id": 7, "causation_id": ["x"]}),
           Ordered(n=2).with_meta({"correlation_id": "é" * 200, "causation_id": ""}),
           Ordered(n=3).with_meta({"info_id": {"correlation_id": "x" * 256}})]
    memory_yard.event_bus().publish(odd)
    memory_yard.wait_until(lambda: seen.count == 3)

    assert seen.ids == {m.get_message_id(): (m.get_message_id(), None) for m in odd}
