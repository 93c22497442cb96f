"""Chaos soak: publish events to several subscribers with chaos on and prove nothing is lost.

``run_soak`` declares a unique organisation's topology, publishes ``events`` events that each of
``subscribers`` handlers receives (plus a protected event type chaos must leave alone), consumes
them with simulated nacks and failures, drops the consumer's connection a few times, waits until
the broker is quiet, and counts by message id per subscriber: every published message must end
up handled or in its dead-letter queue (read from the broker). Works on RabbitMQ and in memory.

With ``services`` above 1 it soaks a fleet: services ``soak1`` to ``soakN`` of the organisation,
each publishing its own events to its own subscribers and consuming with a consumer of its own
(own chaos, own connection drops); service k+1 also subscribes to service k's event
(``publisher=``), and the first service runs the organisation's store, which receives every event
of every service. The store gets a name of the organisation's own (``store_<org>``), so a soak
never touches the store of another organisation on a shared vhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from eventyard import naming
from eventyard.buses import Broker
from eventyard.chaos import ConnectionDrops, EventChaos, SimulatedChaosFailure
from eventyard.consuming import AsyncMessageConsumer, ConsumerEvent, ConsumerSettings
from eventyard.errors import ConfigurationError
from eventyard.memory.soak import MemorySoakProbe
from eventyard.messages import DomainEvent
from eventyard.ports import Transport
from eventyard.publishing import AsyncDomainEventBus
from eventyard.soak_fleet import (
    Service,
    SoakEvent,
    SoakProtectedEvent,
    expected_deliveries,
    service_report,
    subscribers_of,
    tally_of,
)
from eventyard.soak_probes import POLL_SECONDS, SoakProbe, probe_for, wait_until_released
from eventyard.soak_report import (
    SERVICE,
    ServiceReport,
    SoakReport,
    SubscriberReport,
    Tally,
    all_settled,
    broker_settled,
    subscriber_report,
)
from eventyard.subscribers import subscriptions_of
from eventyard.topology import QueueType, Topology, TopologyOptions, build_topology, subscription_queue

__all__ = [  # the probes and reports stay importable from here
    "SERVICE", "MemorySoakProbe", "ServiceReport", "SoakEvent", "SoakProbe", "SoakProtectedEvent",
    "SoakReport", "SubscriberReport", "probe_for", "run_soak", "run_soak_async",
]

logger = logging.getLogger(__name__)

_PUBLISH_BATCH = 250


async def run_soak_async(
    broker: Broker,
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
    services: int = 1,
    queue_type: QueueType = "classic",
    disruption: Callable[[Callable[[], int]], Coroutine[Any, Any, None]] | None = None,
) -> SoakReport:
    """Run a soak on the running loop; see ``run_soak``."""
    if events < 1 or subscribers < 1:
        raise ConfigurationError("a soak needs at least 1 event and 1 subscriber")
    if isinstance(services, bool) or not isinstance(services, int) or services < 1:
        raise ConfigurationError(f"a soak needs at least 1 service, not {services!r}")
    protected_count = max(1, events // 10) if protected_events is None else protected_events
    org = organization or f"soak{uuid.uuid4().hex[:10]}"
    naming.check_word(org, "organization")
    started = time.monotonic()

    names = [SERVICE] if services == 1 else [f"{SERVICE}{i + 1}" for i in range(services)]
    # One service keeps today's layout, without a store; a fleet shares one store, named after
    # the organisation so that it never meets another organisation's `store` on the vhost.
    store_queue = f"store_{org}" if services > 1 else None
    options = TopologyOptions(retry_ttl_ms=retry_ttl_ms, max_retries=max_retries,
                              store=store_queue is not None,
                              store_queue=store_queue or naming.STORE_QUEUE,
                              queue_type=queue_type)
    protected_keys = [naming.routing_key(org, name, 1, "event", SoakProtectedEvent.message_name)
                      for name in names]
    tallies: dict[str, Tally] = {}
    fleet: list[Service] = []
    for index, name in enumerate(names):
        subs = subscribers_of(index, names, subscribers, protected_count)
        subscriptions = subscriptions_of(subs)
        queues = []
        for sub in subscriptions:
            queue = subscription_queue(org, name, sub, options.store_queue)
            tallies[queue] = tally_of(name, sub)
            queues.append(queue)
        expected = sum(expected_deliveries(tallies[q], names, events, protected_count) for q in queues)
        chaos_seed = None if seed is None else seed + index
        fleet.append(Service(
            name, subs, build_topology(org, name, subscriptions, options), queues,
            EventChaos(nack, delay, failure, protected_keys, seed=chaos_seed, environ={}),
            ConnectionDrops(drops, expected, seed=chaos_seed)))

    probe = probe or await probe_for(broker)
    publisher = await broker.publisher_transport()
    declared: list[Topology] = []
    quiet = False
    try:
        for service in fleet:
            await publisher.declare(service.topology)
            declared.append(service.topology)
        for service in fleet:
            service.consumer = _consumer(broker, org, service, tallies, max_retries, prefetch,
                                         options)
        drop_tasks: list[asyncio.Task[None]] = []
        try:
            for service in fleet:
                assert service.consumer is not None
                await service.consumer.start()
            drop_tasks += [asyncio.create_task(_dropper(probe, org, service)) for service in fleet]
            if disruption is not None:  # counted among the drops: the soak waits for it
                drop_tasks.append(asyncio.create_task(disruption(
                    lambda: sum(s.activity for s in fleet))))
            await _publish(broker, org, fleet, events, protected_count, tallies)
            quiet = await _wait_until_quiet(probe, fleet, tallies, drop_tasks, timeout, started)
        finally:
            for task in drop_tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    try:
                        await task
                    except Exception:
                        logger.exception("soak %s: dropping a consumer's connection failed", org)
            for service in fleet:
                if service.consumer is not None:
                    await service.consumer.stop(10.0)
                for transport in service.transports:
                    with contextlib.suppress(Exception):
                        await transport.close()
            await wait_until_released(probe, tallies)
        reports = [await subscriber_report(probe, queue, tally)
                   for queue, tally in tallies.items()]
    finally:
        if not keep:
            for topology in reversed(declared):
                with contextlib.suppress(Exception):
                    await publisher.delete(topology)
        await probe.close()
    settings = {"subscribers": subscribers, "nack": nack, "failure": failure, "delay": delay,
                "max_retries": max_retries, "retry_ttl_ms": retry_ttl_ms, "seed": seed,
                "prefetch": prefetch, "timeout": timeout, "services": services}
    return SoakReport(org, ",".join(names), events, protected_count, settings,
                      drops * len(fleet), sum(s.drops_done for s in fleet), quiet,
                      round(time.monotonic() - started, 2), keep, reports,
                      [service_report(s, reports) for s in fleet], store_queue)


def run_soak(broker: Broker, **options: Any) -> SoakReport:
    """Run a chaos soak against ``broker`` (a connector) and report per subscriber and service.

    Options are ``run_soak_async``'s: ``events``, ``subscribers``, ``services``, ``nack``,
    ``failure``, ``delay``, ``drops`` (per consumer), ``seed``, ``max_retries``,
    ``retry_ttl_ms``, ``protected_events``, ``prefetch``, ``timeout``, ``organization``, ``keep``,
    ``queue_type``; ``disruption``, started with the consumers, is given a count of what they
    did so far (to kill a broker node at some point, say).
    """
    return broker.loop_thread.run(run_soak_async(broker, **options))


def _consumer(broker: Broker, org: str, service: Service, tallies: dict[str, Tally],
              max_retries: int, prefetch: int, options: TopologyOptions) -> AsyncMessageConsumer:
    """Service's consumer on connections of its own, counting what happens on its queues."""

    def observe(event: ConsumerEvent) -> None:
        tally = tallies.get(event.queue)
        if tally is None or event.message_id is None:
            return
        service.activity += 1
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
        if (event.kind in ("handled", "failed", "chaos_nack", "poison")
                and service.drops.due(service.activity)):
            service.drops_wanted += 1
            service.drop_wanted.set()

    async def consumer_source() -> Transport:
        transport = await broker.consumer_transport()
        service.transports.append(transport)
        return transport

    consumer = AsyncMessageConsumer(
        consumer_source, org, service.name, max_retries, chaos=service.chaos, observers=[observe],
        settings=ConsumerSettings(prefetch=prefetch, shutdown_timeout=10.0), options=options)
    consumer.add_subscribers(service.subscribers)
    return consumer


async def _dropper(probe: SoakProbe, org: str, service: Service) -> None:
    """Cut the service's consumer connections whenever its schedule says so."""
    wanted = len(service.drops.points)
    while service.drops_done < wanted:
        await service.drop_wanted.wait()
        service.drop_wanted.clear()
        while service.drops_done < service.drops_wanted:  # several points may pass before we run
            for transport in service.transports:
                await probe.drop(transport)
            service.drops_done += 1
            logger.info("soak %s: dropped %s's consumer connection (%d/%d)",
                        org, service.name, service.drops_done, wanted)


async def _publish(broker: Broker, org: str, fleet: list[Service], events: int,
                   protected_count: int, tallies: dict[str, Tally]) -> None:
    """Every service publishes its events at once, in batches."""

    async def publish(service: Service) -> None:
        bus = AsyncDomainEventBus(broker.publisher_transport, org, service.name)
        plain = [t for t in tallies.values() if t.receives(service.name, False)]
        shielded = [t for t in tallies.values() if t.receives(service.name, True)]
        batch: list[DomainEvent] = []
        for sequence in range(max(events, protected_count)):
            if sequence < events:
                batch.append(SoakEvent(sequence=sequence))
                _expect(plain, batch[-1])
            if sequence < protected_count:
                batch.append(SoakProtectedEvent(sequence=sequence))
                _expect(shielded, batch[-1])
            if len(batch) >= _PUBLISH_BATCH:
                await bus.publish(batch)
                service.emitted += len(batch)
                batch = []
        if batch:
            await bus.publish(batch)
            service.emitted += len(batch)

    await asyncio.gather(*(publish(service) for service in fleet))


def _expect(tallies: Iterable[Tally], event: DomainEvent) -> None:
    for tally in tallies:
        tally.published.add(event.get_message_id())


async def _wait_until_quiet(probe: SoakProbe, fleet: list[Service], tallies: dict[str, Tally],
                            drop_tasks: list[asyncio.Task[None]], timeout: float,
                            started: float) -> bool:
    """Poll until every message is accounted for and every queue is empty, twice in a row."""
    deadline = started + timeout
    calm = 0
    last = -1
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)  # polling interval of a deadline-bounded wait
        activity = sum(s.activity for s in fleet)
        if activity != last:
            last, calm = activity, 0
            continue
        if (not all(task.done() for task in drop_tasks) or not all_settled(tallies)
                or not await broker_settled(probe, tallies)):
            calm = 0
            continue
        calm += 1
        if calm >= 2:
            return True
    logger.warning("soak did not go quiet within %.0f s", timeout)
    return False
