"""The soaked fleet: its events, its services and their subscribers (see ``eventyard.soak``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eventyard.chaos import ConnectionDrops, EventChaos
from eventyard.consuming import AsyncMessageConsumer
from eventyard.messages import DomainEvent
from eventyard.ports import Transport
from eventyard.soak_report import ServiceReport, SubscriberReport, Tally
from eventyard.subscribers import MessageSubscriber, Subscription
from eventyard.topology import Topology

_STORE_HANDLER = "store_handler"


class SoakEvent(DomainEvent):
    """The event every soak subscriber receives, chaos included."""

    sequence: int


class SoakProtectedEvent(DomainEvent):
    """An event whose routing key is protected: chaos never touches it."""

    sequence: int


@dataclass(slots=True)
class Service:
    """One soaked service: its topology, its consumer's chaos and its connection drops."""

    name: str
    subscribers: list[MessageSubscriber]
    topology: Topology
    queues: list[str]
    chaos: EventChaos
    drops: ConnectionDrops
    emitted: int = 0
    activity: int = 0
    drops_wanted: int = 0
    drops_done: int = 0
    drop_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    transports: list[Transport] = field(default_factory=list)
    consumer: AsyncMessageConsumer | None = None


def _async_handler(name: str, fail_first_of: Callable[[int], bool] | None = None
                   ) -> Callable[[Any], Awaitable[bool]]:
    seen: set[str] = set()

    async def handler(message: Any) -> bool:
        if fail_first_of is not None and fail_first_of(message.sequence):
            first = message.get_message_id() not in seen
            seen.add(message.get_message_id())
            return not first  # a real failure on the first attempt: exercises the retry path
        return True

    handler.__name__ = handler.__qualname__ = name
    return handler


def subscribers_of(index: int, names: list[str], subscribers: int, protected_count: int
                    ) -> list[MessageSubscriber]:
    """Service ``index``'s subscribers: its own, the previous service's event, the store."""
    subs = [MessageSubscriber.from_message(SoakEvent, [_async_handler(f"soak_handler_{i + 1}")])
            for i in range(subscribers)]
    if protected_count:
        subs.append(MessageSubscriber.from_message(
            SoakProtectedEvent, [_async_handler("protected_handler", lambda n: n % 10 == 0)]))
    if len(names) > 1:
        if index > 0:  # named after the consumer: the queue lives under the publisher's name
            subs.append(MessageSubscriber.from_message(
                SoakEvent, [_async_handler(f"cross_{names[index]}")], publisher=names[index - 1]))
        if index == 0:
            subs.append(MessageSubscriber.all_messages([_async_handler(_STORE_HANDLER)]))
    return subs


def tally_of(service: str, subscription: Subscription) -> Tally:
    """An empty tally for one subscription of ``service``."""
    return Tally(service, subscription.handler_name, subscription.publisher,
                  subscription.message_class is SoakProtectedEvent, subscription.is_store)


def expected_deliveries(tally: Tally, names: list[str], events: int, protected_count: int) -> int:
    """Deliveries a queue should get (before retries), to spread the drops over."""
    if tally.store:
        return len(names) * (events + protected_count)
    return protected_count if tally.protected else events


def service_report(service: Service, reports: list[SubscriberReport]) -> ServiceReport:
    """``service``'s totals over its subscribers' reports."""
    mine = [r for r in reports if r.service == service.name]

    def total(name: str) -> int:
        return sum(int(getattr(r, name)) for r in mine)

    return ServiceReport(
        service=service.name, emitted=service.emitted, subscribers=len(mine),
        published=total("published"), handled=total("handled"),
        duplicates=total("duplicates"), retried=total("retried"),
        dead_lettered=total("dead_lettered"),
        handled_and_dead_lettered=total("handled_and_dead_lettered"), lost=total("lost"),
        pending=total("pending"), unexpected=total("unexpected"),
        chaos_nacks=total("chaos_nacks"), chaos_failures=total("chaos_failures"),
        drops_requested=len(service.drops.points), drops_done=service.drops_done)
