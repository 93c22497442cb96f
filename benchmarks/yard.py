"""eventyard programs: the same work as the raw ones, through eventyard's public API."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from benchmarks.common import SERVICE, URL, BenchEvent, Plan, new_event, rss_kib, subscriber
from eventyard.consuming import ConsumerSettings
from eventyard.rabbitmq import (
    AsyncRabbitMqDomainEventBus,
    AsyncRabbitMqMessageConsumer,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConsumer,
)

PREFETCH = 256


def publish_one(plan: Plan, count: int) -> dict[str, Any]:
    """The sync bus: ``bus.publish(event)`` one after the other (each confirmed)."""
    events = [new_event(seq) for seq in range(count)]
    with RabbitMqConnector(URL) as connector:
        bus = RabbitMqDomainEventBus(connector, plan.org, SERVICE)
        bus.publish(new_event())  # warm-up: connects
        started = time.perf_counter()
        for event in events:
            bus.publish(event)
        elapsed = time.perf_counter() - started
    return {"count": count, "seconds": elapsed}


def publish_batch(plan: Plan, count: int) -> dict[str, Any]:
    """The sync bus: ``bus.publish([...])`` of ``count`` events."""
    events = [new_event(seq) for seq in range(count)]
    with RabbitMqConnector(URL) as connector:
        bus = RabbitMqDomainEventBus(connector, plan.org, SERVICE)
        bus.publish(new_event())  # warm-up: connects
        started = time.perf_counter()
        bus.publish(events)
        elapsed = time.perf_counter() - started
    return {"count": count, "seconds": elapsed}


class _Counter:
    """Counts handled events; ``done`` is set at ``target``; optional RSS samples."""

    def __init__(self, target: int, sample_every: int = 0) -> None:
        self.target = target
        self.seen = 0
        self.done = threading.Event()
        self.sample_every = sample_every
        self.samples: list[tuple[int, int]] = []

    def hit(self) -> None:
        self.seen += 1
        if self.sample_every and self.seen % self.sample_every == 0:
            self.samples.append((self.seen, rss_kib()))
        if self.seen >= self.target:
            self.done.set()


def consume_sync(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``RabbitMqMessageConsumer`` (the seed's sync API), a sync no-op handler, prefetch 256."""
    counter = _Counter(count, sample_every)

    def noop(event: BenchEvent) -> None:
        counter.hit()

    with RabbitMqConnector(URL) as connector:
        consumer = RabbitMqMessageConsumer(connector, plan.org, SERVICE, prefetch=PREFETCH)
        consumer.add_subscribers([subscriber(noop)])
        rss_before = rss_kib()
        started = time.perf_counter()
        consumer.start()
        counter.done.wait(600)
        elapsed = time.perf_counter() - started
        consumer.stop()
    return {"count": counter.seen, "seconds": elapsed, "rss_before": rss_before,
            "samples": counter.samples}


async def _consume_async(plan: Plan, count: int, sample_every: int) -> dict[str, Any]:
    counter = _Counter(count, sample_every)
    finished = asyncio.Event()

    async def anoop(event: BenchEvent) -> None:
        counter.hit()
        if counter.seen >= count:
            finished.set()

    connector = RabbitMqConnector(URL)
    consumer = AsyncRabbitMqMessageConsumer(connector, plan.org, SERVICE,
                                            settings=ConsumerSettings(prefetch=PREFETCH))
    consumer.add_subscribers([subscriber(anoop)])
    rss_before = rss_kib()
    started = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(finished.wait(), 600)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await connector.aclose()
    return {"count": counter.seen, "seconds": elapsed, "rss_before": rss_before,
            "samples": counter.samples}


def consume_async(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``AsyncRabbitMqMessageConsumer``, an async no-op handler, prefetch 256."""
    return asyncio.run(_consume_async(plan, count, sample_every))


async def _latency(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    from benchmarks.raw import _paced

    latencies: list[float] = []
    finished = asyncio.Event()

    async def anoop(event: BenchEvent) -> None:
        latencies.append(time.perf_counter() - event.sent_at)
        if len(latencies) >= count:
            finished.set()

    connector = RabbitMqConnector(URL)
    consumer = AsyncRabbitMqMessageConsumer(connector, plan.org, SERVICE,
                                            settings=ConsumerSettings(prefetch=PREFETCH))
    consumer.add_subscribers([subscriber(anoop)])
    await consumer.start()
    bus = AsyncRabbitMqDomainEventBus(connector, plan.org, SERVICE)

    async def send(seq: int) -> None:
        await bus.publish(new_event(seq, time.perf_counter()))

    await _paced(send, count, rate)
    await asyncio.wait_for(finished.wait(), 120)
    await consumer.stop()
    await connector.aclose()
    return {"count": count, "latencies": latencies}


def latency(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    """Async bus and async consumer in one loop: publish-to-handler latency."""
    return asyncio.run(_latency(plan, count, rate))


async def _retry(plan: Plan, count: int) -> dict[str, Any]:
    seen: set[str] = set()
    handled = 0
    finished = asyncio.Event()

    async def anoop(event: BenchEvent) -> bool:
        nonlocal handled
        message_id = event.get_message_id()
        if message_id not in seen:  # fail the first time
            seen.add(message_id)
            return False
        handled += 1
        if handled >= count:
            finished.set()
        return True

    connector = RabbitMqConnector(URL)
    consumer = AsyncRabbitMqMessageConsumer(connector, plan.org, SERVICE, 5,
                                            settings=ConsumerSettings(prefetch=PREFETCH))
    consumer.add_subscribers([subscriber(anoop)])
    started = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(finished.wait(), 600)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await connector.aclose()
    return {"count": count, "seconds": elapsed}


def retry(plan: Plan, count: int) -> dict[str, Any]:
    """Async consumer whose handler fails once per message (retry TTL 0), then succeeds."""
    return asyncio.run(_retry(plan, count))


def _opentelemetry_on() -> None:
    """The OpenTelemetry SDK as an application sets it up, its exporter discarding the spans
    (metrics are aggregated, never read): what instrumentation costs eventyard itself."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def _opentelemetry_off() -> None:
    from eventyard.observability import use_opentelemetry

    use_opentelemetry(False)


def publish_batch_otel(plan: Plan, count: int) -> dict[str, Any]:
    """``publish_batch`` with OpenTelemetry on (spans and metrics recorded)."""
    _opentelemetry_on()
    return publish_batch(plan, count)


def publish_batch_off(plan: Plan, count: int) -> dict[str, Any]:
    """``publish_batch`` with eventyard's instruments switched off."""
    _opentelemetry_off()
    return publish_batch(plan, count)


def consume_async_otel(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``consume_async`` with OpenTelemetry on (spans and metrics recorded)."""
    _opentelemetry_on()
    return consume_async(plan, count, sample_every)


def consume_async_off(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``consume_async`` with eventyard's instruments switched off."""
    _opentelemetry_off()
    return consume_async(plan, count, sample_every)


def _fast_paths_off() -> None:
    """aiormq's public API alone (``EVENTYARD_AMQP_FAST_PATHS=0``), as on an unlisted aiormq."""
    os.environ["EVENTYARD_AMQP_FAST_PATHS"] = "0"


def publish_one_public(plan: Plan, count: int) -> dict[str, Any]:
    """``publish_one`` with the fast paths off."""
    _fast_paths_off()
    return publish_one(plan, count)


def publish_batch_public(plan: Plan, count: int) -> dict[str, Any]:
    """``publish_batch`` with the fast paths off."""
    _fast_paths_off()
    return publish_batch(plan, count)


def consume_sync_public(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``consume_sync`` with the fast paths off."""
    _fast_paths_off()
    return consume_sync(plan, count, sample_every)


def consume_async_public(plan: Plan, count: int, sample_every: int = 0) -> dict[str, Any]:
    """``consume_async`` with the fast paths off."""
    _fast_paths_off()
    return consume_async(plan, count, sample_every)


PROGRAMS = {
    "eventyard_publish_one_public": publish_one_public,
    "eventyard_publish_batch_public": publish_batch_public,
    "eventyard_consume_sync_public": consume_sync_public,
    "eventyard_consume_async_public": consume_async_public,
    "eventyard_publish_batch_otel": publish_batch_otel,
    "eventyard_publish_batch_off": publish_batch_off,
    "eventyard_consume_async_otel": consume_async_otel,
    "eventyard_consume_async_off": consume_async_off,
    "eventyard_publish_one": publish_one,
    "eventyard_publish_batch": publish_batch,
    "eventyard_consume_sync": consume_sync,
    "eventyard_consume_async": consume_async,
    "eventyard_latency": latency,
    "eventyard_retry": retry,
}
