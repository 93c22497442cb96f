"""Chaos soak: publish events to several subscribers with chaos on and prove nothing is lost.

``run_soak`` declares a unique organisation's topology, publishes ``events`` events that each of
``subscribers`` handlers receives (plus a protected event type chaos must leave alone), consumes
them with simulated nacks and failures, drops the consumer's connection a few times, waits until
the broker is quiet, and counts by message id per subscriber: every published message must end
up handled or in its dead-letter queue (read from the broker). Works on RabbitMQ and in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from eventyard import naming
from eventyard.buses import Backend
from eventyard.chaos import ConnectionDrops, EventChaos, SimulatedChaosFailure
from eventyard.consuming import AsyncMessageConsumer, ConsumerEvent, ConsumerSettings
from eventyard.errors import ConfigurationError
from eventyard.messages import DomainEvent
from eventyard.ports import Transport
from eventyard.publishing import AsyncDomainEventBus
from eventyard.subscribers import MessageSubscriber, subscriptions_of
from eventyard.topology import TopologyOptions, build_topology, subscription_queue

logger = logging.getLogger(__name__)

SERVICE = "soak"
_POLL_SECONDS = 0.2
_PUBLISH_BATCH = 250


class SoakEvent(DomainEvent):
    """The event every soak subscriber receives, chaos included."""

    sequence: int


class SoakProtectedEvent(DomainEvent):
    """An event whose routing key is protected: chaos never touches it."""

    sequence: int


class SoakProbe(Protocol):
    """What a soak needs from a broker beyond the ``Transport`` port."""

    async def ready_count(self, queue: str) -> int:
        """Messages waiting in ``queue`` (delayed retries included)."""

    async def message_ids(self, queue: str) -> list[str]:
        """The ``message_id`` of every message in ``queue``, left in place."""

    async def consumer_count(self, queue: str) -> int:
        """Consumers the broker still counts on ``queue``."""

    async def drop(self, transport: Transport) -> None:
        """Cut ``transport``'s connection as a network failure would; it reconnects by itself."""

    async def close(self) -> None:
        """Release what the probe opened."""


@dataclass(frozen=True, slots=True)
class SubscriberReport:
    """What happened to one subscriber's messages, counted by message id.

    ``handled + dead_lettered - handled_and_dead_lettered + lost + pending == published``:
    at-least-once delivery may run a message again after a dropped ack, so one copy can be
    handled while another runs out of retries.
    """

    queue: str
    protected: bool
    published: int
    handled: int
    duplicates: int
    retried: int
    dead_lettered: int
    handled_and_dead_lettered: int
    lost: int
    pending: int
    unexpected: int
    chaos_nacks: int
    chaos_failures: int
    observed_dead_lettered: int

    @property
    def ok(self) -> bool:
        """Every published message handled or dead-lettered, nothing left over or unknown."""
        return self.lost == 0 and self.pending == 0 and self.unexpected == 0


@dataclass(frozen=True, slots=True)
class SoakReport:
    """The result of a soak; ``ok`` is the verdict."""

    organization: str
    service: str
    events: int
    protected_events: int
    settings: dict[str, Any]
    drops_requested: int
    drops_done: int
    quiet: bool
    seconds: float
    kept: bool
    subscribers: list[SubscriberReport] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Messages lost over every subscriber (must be 0)."""
        return sum(s.lost for s in self.subscribers)

    @property
    def ok(self) -> bool:
        """The broker went quiet and every subscriber accounted for every message."""
        return self.quiet and all(s.ok for s in self.subscribers)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = asdict(self)
        data["subscribers"] = [{**asdict(s), "ok": s.ok} for s in self.subscribers]
        data["lost"] = self.lost
        data["ok"] = self.ok
        return data


@dataclass(slots=True)
class _Tally:
    """What the consumer told us about one queue."""

    published: set[str] = field(default_factory=set)
    handled: Counter[str] = field(default_factory=Counter)
    observed_dead: set[str] = field(default_factory=set)
    retried: int = 0
    chaos_nacks: int = 0
    chaos_failures: int = 0

    def settled_by_observers(self) -> bool:
        return self.published <= (self.handled.keys() | self.observed_dead)


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


async def run_soak_async(
    backend: Backend,
    *,
    events: int = 1000,
    subscribers: int = 3,
    nack: float = 0.2,
    failure: float = 0.2,
    delay: float = 0.0,
    drops: int = 3,
    seed: int | None = None,
    max_retries: int = 2,
    retry_ttl_ms: int = 100,
    protected_events: int | None = None,
    prefetch: int = 20,
    timeout: float = 300.0,
    organization: str | None = None,
    keep: bool = False,
    probe: SoakProbe | None = None,
) -> SoakReport:
    """Run a soak on the running loop; see ``run_soak``."""
    if events < 1 or subscribers < 1:
        raise ConfigurationError("a soak needs at least 1 event and 1 subscriber")
    protected_count = max(1, events // 10) if protected_events is None else protected_events
    org = organization or f"soak{uuid.uuid4().hex[:10]}"
    naming.check_word(org, "organization")
    started = time.monotonic()

    subs = [MessageSubscriber.from_message(SoakEvent, [_async_handler(f"soak_handler_{i + 1}")])
            for i in range(subscribers)]
    if protected_count:
        subs.append(MessageSubscriber.from_message(
            SoakProtectedEvent, [_async_handler("protected_handler", lambda n: n % 10 == 0)]))
    subscriptions = subscriptions_of(subs)
    options = TopologyOptions(retry_ttl_ms=retry_ttl_ms, max_retries=max_retries, store=False)
    topology = build_topology(org, SERVICE, subscriptions, options)
    queues = {subscription_queue(org, SERVICE, s, options.store_queue): s.message_class is SoakProtectedEvent
              for s in subscriptions}
    protected_key = naming.routing_key(org, SERVICE, 1, "event", SoakProtectedEvent.message_name)
    chaos = EventChaos(nack, delay, failure, [protected_key], seed=seed, environ={})

    tallies = {queue: _Tally() for queue in queues}
    total_deliveries = events * subscribers + protected_count
    schedule = ConnectionDrops(drops, total_deliveries, seed=seed)
    activity = [0]
    drops_wanted = [0]
    drop_wanted = asyncio.Event()

    def observe(event: ConsumerEvent) -> None:
        tally = tallies.get(event.queue)
        if tally is None or event.message_id is None:
            return
        activity[0] += 1
        if event.kind == "handled":
            tally.handled[event.message_id] += 1
        elif event.kind == "retried":
            tally.retried += 1
        elif event.kind == "dead_lettered":
            tally.observed_dead.add(event.message_id)
        elif event.kind == "chaos_nack":
            tally.chaos_nacks += 1
        elif event.kind == "failed" and event.outcome.error_type == SimulatedChaosFailure.__name__:
            tally.chaos_failures += 1
        if event.kind in ("handled", "failed", "chaos_nack", "poison") and schedule.due(activity[0]):
            drops_wanted[0] += 1
            drop_wanted.set()

    consumer_transports: list[Transport] = []

    async def consumer_source() -> Transport:
        transport = await backend.consumer_transport()
        consumer_transports.append(transport)
        return transport

    probe = probe or await probe_for(backend)
    publisher = await backend.publisher_transport()
    await publisher.declare(topology)
    consumer = AsyncMessageConsumer(
        consumer_source, org, SERVICE, max_retries, chaos=chaos, observers=[observe],
        settings=ConsumerSettings(prefetch=prefetch, shutdown_timeout=10.0))
    consumer.add_subscribers(subs)
    drops_done = 0
    quiet = False
    try:
        await consumer.start()

        async def dropper() -> None:
            nonlocal drops_done
            while drops_done < drops:
                await drop_wanted.wait()
                drop_wanted.clear()
                while drops_done < drops_wanted[0]:  # several points may pass before we run
                    for transport in consumer_transports:
                        await probe.drop(transport)
                    drops_done += 1
                    logger.info("soak %s: dropped the consumer's connection (%d/%d)",
                                org, drops_done, drops)

        drop_task = asyncio.create_task(dropper())
        await _publish(backend, org, events, protected_count, queues, tallies)
        quiet = await _wait_until_quiet(probe, queues, tallies, activity, drop_task, timeout,
                                        started)
        drop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await drop_task
            except Exception:
                logger.exception("soak %s: dropping the consumer's connection failed", org)
    finally:
        await consumer.stop(10.0)
        for transport in consumer_transports:
            with contextlib.suppress(Exception):
                await transport.close()
        await _wait_until_released(probe, queues)

    try:
        reports = []
        for queue, protected in queues.items():
            tally = tallies[queue]
            dead = set(await probe.message_ids(naming.dead_letter_queue(queue)))
            pending = set(await probe.message_ids(queue)) | set(
                await probe.message_ids(naming.retry_queue(queue)))
            handled = set(tally.handled)
            accounted = handled | dead
            reports.append(SubscriberReport(
                queue=queue, protected=protected, published=len(tally.published),
                handled=len(handled), duplicates=sum(1 for n in tally.handled.values() if n > 1),
                retried=tally.retried, dead_lettered=len(dead),
                handled_and_dead_lettered=len(handled & dead),
                lost=len(tally.published - accounted - pending),
                pending=len(pending & tally.published - accounted),
                unexpected=len((accounted | pending) - tally.published),
                chaos_nacks=tally.chaos_nacks, chaos_failures=tally.chaos_failures,
                observed_dead_lettered=len(tally.observed_dead)))
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                await publisher.delete(topology)
        await probe.close()
    settings = {"subscribers": subscribers, "nack": nack, "failure": failure, "delay": delay,
                "max_retries": max_retries, "retry_ttl_ms": retry_ttl_ms, "seed": seed,
                "prefetch": prefetch, "timeout": timeout}
    return SoakReport(org, SERVICE, events, protected_count, settings, drops, drops_done, quiet,
                      round(time.monotonic() - started, 2), keep, reports)


def run_soak(backend: Backend, **options: Any) -> SoakReport:
    """Run a chaos soak against ``backend`` (a connector) and report per subscriber.

    Options are ``run_soak_async``'s: ``events``, ``subscribers``, ``nack``, ``failure``,
    ``delay``, ``drops``, ``seed``, ``max_retries``, ``retry_ttl_ms``, ``protected_events``,
    ``prefetch``, ``timeout``, ``organization``, ``keep``.
    """
    return backend.loop_thread.run(run_soak_async(backend, **options))


async def _publish(backend: Backend, org: str, events: int, protected_count: int,
                   queues: dict[str, bool], tallies: dict[str, _Tally]) -> None:
    bus = AsyncDomainEventBus(backend.publisher_transport, org, SERVICE)
    plain = [queue for queue, protected in queues.items() if not protected]
    shielded = [queue for queue, protected in queues.items() if protected]
    batch: list[DomainEvent] = []
    for sequence in range(max(events, protected_count)):
        if sequence < events:
            batch.append(SoakEvent(sequence=sequence))
            for queue in plain:
                tallies[queue].published.add(batch[-1].get_message_id())
        if sequence < protected_count:
            batch.append(SoakProtectedEvent(sequence=sequence))
            for queue in shielded:
                tallies[queue].published.add(batch[-1].get_message_id())
        if len(batch) >= _PUBLISH_BATCH:
            await bus.publish(batch)
            batch = []
    if batch:
        await bus.publish(batch)


async def _wait_until_quiet(probe: SoakProbe, queues: dict[str, bool], tallies: dict[str, _Tally],
                            activity: list[int], drop_task: asyncio.Task[None], timeout: float,
                            started: float) -> bool:
    """Poll until every message is accounted for and every queue is empty, twice in a row."""
    deadline = started + timeout
    calm = 0
    last = -1
    while time.monotonic() < deadline:
        await asyncio.sleep(_POLL_SECONDS)  # polling interval of a deadline-bounded wait
        if activity[0] != last:
            last, calm = activity[0], 0
            continue
        if (not drop_task.done() or not _all_settled(tallies)
                or not await _broker_settled(probe, queues, tallies)):
            calm = 0
            continue
        calm += 1
        if calm >= 2:
            return True
    logger.warning("soak did not go quiet within %.0f s", timeout)
    return False


async def _wait_until_released(probe: SoakProbe, queues: dict[str, bool], timeout: float = 10.0) -> None:
    """Wait until the broker has let go of our consumers: their unacked messages are back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [await probe.consumer_count(queue) for queue in queues]
        if not any(counts):
            return
        await asyncio.sleep(_POLL_SECONDS / 4)  # polling interval of a deadline-bounded wait
    logger.warning("the broker still counts consumers on the soak's queues after %.0f s", timeout)


def _all_settled(tallies: dict[str, _Tally]) -> bool:
    return all(t.settled_by_observers() for t in tallies.values())


async def _broker_settled(probe: SoakProbe, queues: dict[str, bool],
                          tallies: dict[str, _Tally]) -> bool:
    for queue in queues:
        if await probe.ready_count(queue) or await probe.ready_count(naming.retry_queue(queue)):
            return False
    for queue, tally in tallies.items():
        dead = set(await probe.message_ids(naming.dead_letter_queue(queue)))
        if not tally.published <= (tally.handled.keys() | dead):
            return False
    return True


class MemorySoakProbe:
    """A ``SoakProbe`` for the in-memory broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def ready_count(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        return int(self.broker.message_count(queue))

    async def message_ids(self, queue: str) -> list[str]:
        """Ids of the messages in ``queue``."""
        return [m.message_id for m in self.broker.messages(queue) if m.message_id]

    async def consumer_count(self, queue: str) -> int:
        """Always 0: a closed in-memory connection lets go of its consumers at once."""
        return 0

    async def drop(self, transport: Transport) -> None:
        """Drop the in-memory connection (it resumes at once)."""
        await transport.drop()  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Nothing to release."""


async def probe_for(backend: Backend) -> SoakProbe:
    """The soak probe for a RabbitMQ connector or an in-memory broker."""
    memory = sys.modules.get("eventyard.memory")
    if memory is not None and isinstance(backend, memory.MemoryBroker):
        return MemorySoakProbe(backend)
    rabbitmq = sys.modules.get("eventyard.rabbitmq")
    if rabbitmq is not None and isinstance(backend, rabbitmq.RabbitMqConnector):
        from eventyard.rabbitmq.soak import RabbitMqSoakProbe

        probe = RabbitMqSoakProbe(backend.settings)
        await probe.connect()
        return probe
    raise ConfigurationError(f"no soak probe for {backend!r}: pass probe= to run_soak")
