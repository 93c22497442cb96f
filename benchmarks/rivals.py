"""Rival programs: the same work as eventyard's, written as a FastStream or a petisco user would.

FastStream (its RabbitMQ broker, on aio-pika) publishes and consumes a pydantic model of the
same envelope eventyard sends, so it encodes, decodes and validates its own messages as
eventyard does; publisher confirms on (FastStream's default), persistent messages, mandatory,
acks after the handler (``AckPolicy.ACK``), prefetch 256. Its per-message access log is off
(``logger=None``): eventyard logs nothing per message either.

petisco 2.2.3 is used through its own buses and consumer, configured as petisco is (the
``RABBITMQ_*`` variables, set in this fresh process before petisco is imported). It names its
exchange and queues from organisation and service as eventyard's topology does, so it works on
the plan's topology; it always connects to the vhost ``/`` (see ``petisco_usable``). Its inner
buses are given as petisco's not-implemented ones: by default its consumer logs two warnings
per message about building them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from pydantic import BaseModel

from benchmarks.common import URL, Plan, new_event
from eventyard import codec

PREFETCH = 256
WINDOW = 256


def petisco_usable() -> str | None:
    """Why petisco's programs cannot run here, or None when they can."""
    try:
        import petisco  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return "petisco is not importable"
    if urlsplit(URL).path not in ("", "/"):
        return f"petisco connects to the vhost / only and the benchmark's URL names {URL!r}"
    return None


# -- FastStream ---------------------------------------------------------------------------------


class Attributes(BaseModel):
    user_id: UUID
    seq: int
    sent_at: float


class Data(BaseModel):
    id: UUID
    type: str
    type_message: str
    version: int
    occurred_on: datetime
    attributes: Attributes
    meta: dict[str, Any]


class Envelope(BaseModel):
    """The envelope eventyard (and petisco) send, as a FastStream user would model it."""

    data: Data


def _envelopes(count: int) -> list[Envelope]:
    return [Envelope.model_validate_json(codec.encode(new_event(seq))) for seq in range(count)]


def _broker() -> Any:
    from faststream.rabbit import RabbitBroker

    return RabbitBroker(URL, logger=None)


def _publisher(broker: Any, plan: Plan) -> Any:
    from faststream.rabbit import ExchangeType, RabbitExchange

    exchange = RabbitExchange(plan.exchange, type=ExchangeType.TOPIC, durable=True, declare=False)
    return broker.publisher(exchange=exchange, routing_key=plan.routing_key, persist=True,
                            mandatory=True, message_type="bench.event")


async def _faststream_publish(plan: Plan, count: int, window: int) -> dict[str, Any]:
    envelopes = _envelopes(count)
    broker = _broker()
    publisher = _publisher(broker, plan)
    async with broker:
        await publisher.publish(envelopes[0])  # warm-up: the channel and the exchange
        started = time.perf_counter()
        if window == 1:
            for envelope in envelopes:
                await publisher.publish(envelope)
        else:
            limit = asyncio.Semaphore(window)

            async def one(envelope: Envelope) -> None:
                async with limit:
                    await publisher.publish(envelope)

            await asyncio.gather(*(one(envelope) for envelope in envelopes))
        elapsed = time.perf_counter() - started
    return {"count": count, "seconds": elapsed}


def faststream_publish_one(plan: Plan, count: int) -> dict[str, Any]:
    """FastStream publisher (confirms on): ``await publisher.publish(model)`` one after another."""
    return asyncio.run(_faststream_publish(plan, count, 1))


def faststream_publish_batch(plan: Plan, count: int) -> dict[str, Any]:
    """FastStream has no batch publish for RabbitMQ: 256 ``publisher.publish`` in flight."""
    return asyncio.run(_faststream_publish(plan, count, WINDOW))


async def _faststream_consume(plan: Plan, count: int) -> dict[str, Any]:
    from faststream import AckPolicy
    from faststream.rabbit import Channel, RabbitQueue

    broker = _broker()
    finished = asyncio.Event()
    seen = 0

    @broker.subscriber(RabbitQueue(plan.queue, durable=True, declare=False),
                       channel=Channel(prefetch_count=PREFETCH), ack_policy=AckPolicy.ACK)
    async def noop(envelope: Envelope) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            finished.set()

    await broker.connect()
    started = time.perf_counter()
    await broker.start()
    await asyncio.wait_for(finished.wait(), 600)
    elapsed = time.perf_counter() - started
    await broker.stop()
    return {"count": seen, "seconds": elapsed}


def faststream_consume(plan: Plan, count: int) -> dict[str, Any]:
    """FastStream subscriber, an async no-op handler taking the envelope model, prefetch 256."""
    return asyncio.run(_faststream_consume(plan, count))


# -- petisco 2.2.3 ------------------------------------------------------------------------------


def _petisco_environment() -> None:
    """petisco's configuration, read from the environment when petisco is imported."""
    parts = urlsplit(URL)
    os.environ.update({
        "RABBITMQ_HOST": parts.hostname or "localhost",
        "RABBITMQ_PORT": str(parts.port or 5672),
        "RABBITMQ_USER": unquote(parts.username or "guest"),
        "RABBITMQ_PASSWORD": unquote(parts.password or "guest"),
        "RABBITMQ_PREFETCH_COUNT": str(PREFETCH),
    })


def _petisco_event() -> Any:
    _petisco_environment()
    from petisco import DomainEvent, Uuid

    class BenchEvent(DomainEvent):  # type: ignore[misc]
        user_id: Uuid
        seq: int = 0
        sent_at: float = 0.0

    return BenchEvent


def _petisco_publish(plan: Plan, count: int, one_by_one: bool) -> dict[str, Any]:
    bench_event = _petisco_event()
    from petisco import Uuid
    from petisco.extra.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus

    events = [bench_event(user_id=Uuid.v4(), seq=seq) for seq in range(count)]
    connector = RabbitMqConnector()
    bus = RabbitMqDomainEventBus(plan.org, "bench", connector)
    bus.publish(bench_event(user_id=Uuid.v4()))  # warm-up: connects
    started = time.perf_counter()
    if one_by_one:
        for event in events:
            bus.publish(event)
    else:
        bus.publish(events)
    elapsed = time.perf_counter() - started
    connector.close_all()
    return {"count": count, "seconds": elapsed}


def petisco_publish_one(plan: Plan, count: int) -> dict[str, Any]:
    """petisco's ``RabbitMqDomainEventBus.publish(event)`` one after another (confirms on)."""
    return _petisco_publish(plan, count, True)


def petisco_publish_batch(plan: Plan, count: int) -> dict[str, Any]:
    """petisco's ``RabbitMqDomainEventBus.publish([...])`` of ``count`` events."""
    return _petisco_publish(plan, count, False)


def _petisco_consume(plan: Plan, count: int, max_retries: int, fail_once: bool) -> dict[str, Any]:
    bench_event = _petisco_event()
    from meiga import BoolResult, isFailure, isSuccess
    from petisco import DomainEventSubscriber, NotImplementedCommandBus, NotImplementedDomainEventBus
    from petisco.extra.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer

    done = threading.Event()
    failed: set[str] = set()
    handled = 0

    def handle(self: Any, domain_event: Any) -> BoolResult:
        nonlocal handled
        if fail_once:
            message_id = str(domain_event.get_message_id())
            if message_id not in failed:
                failed.add(message_id)
                return isFailure
        handled += 1
        if handled >= count:
            done.set()
        return isSuccess

    # The class name is the subscriber's name, the last part of its queue's name.
    subscriber = type(plan.handler.capitalize(), (DomainEventSubscriber,), {
        "subscribed_to": lambda self: [bench_event], "handle": handle})
    connector = RabbitMqConnector()
    consumer = RabbitMqMessageConsumer(
        plan.org, "bench", max_retries, connector,
        domain_event_bus_builder=NotImplementedDomainEventBus,
        command_bus_builder=NotImplementedCommandBus)
    started = time.perf_counter()
    consumer.add_subscribers([subscriber])
    consumer.start()
    done.wait(600)
    elapsed = time.perf_counter() - started
    _petisco_stop(connector, consumer)
    return {"count": handled, "seconds": elapsed}


def _petisco_stop(connector: Any, consumer: Any) -> None:
    """petisco's ``stop()``, with the consumer's connection woken until it is done: petisco asks
    its I/O thread to stop with ``call_later``, which pika runs only at the next I/O."""
    stopper = threading.Thread(target=consumer.stop)
    stopper.start()
    connection = connector.get_connection(consumer.rabbitmq_key)
    while stopper.is_alive():
        connection.add_callback_threadsafe(lambda: None)
        stopper.join(0.1)
    connector.close_all()


def petisco_consume(plan: Plan, count: int) -> dict[str, Any]:
    """petisco's ``RabbitMqMessageConsumer``, a sync no-op subscriber, prefetch 256."""
    return _petisco_consume(plan, count, 0, False)


def petisco_retry(plan: Plan, count: int) -> dict[str, Any]:
    """petisco's consumer whose subscriber fails once per message (retry TTL 0), then succeeds."""
    return _petisco_consume(plan, count, 5, True)


PROGRAMS = {
    "faststream_publish_one": faststream_publish_one,
    "faststream_publish_batch": faststream_publish_batch,
    "faststream_consume": faststream_consume,
    "petisco_publish_one": petisco_publish_one,
    "petisco_publish_batch": petisco_publish_batch,
    "petisco_consume": petisco_consume,
    "petisco_retry": petisco_retry,
}
