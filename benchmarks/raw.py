"""Raw-client programs: the same work as eventyard's, written directly on pika, aiormq, aio-pika."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import aiormq
from pamqp import commands as spec

from benchmarks.common import URL, Plan, blocking, new_event, properties
from eventyard import codec


def _bodies(count: int) -> list[tuple[bytes, str]]:
    events = [new_event(seq) for seq in range(count)]
    return [(codec.encode(e), e.get_message_id()) for e in events]


def _aiormq_properties(message_id: str) -> spec.Basic.Properties:
    return spec.Basic.Properties(content_type="application/json", delivery_mode=2,
                                 message_id=message_id, message_type="bench.event")


def pika_publish_one(plan: Plan, count: int) -> dict[str, Any]:
    """pika BlockingConnection, confirms on: one publish, one confirm, then the next."""
    events = [(codec.encode(e), e) for e in (new_event(seq) for seq in range(count))]
    connection = blocking()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(plan.exchange, plan.routing_key, b"{}", properties(events[0][1]),
                          mandatory=True)  # warm-up
    started = time.perf_counter()
    for body, event in events:
        channel.basic_publish(plan.exchange, plan.routing_key, body, properties(event),
                              mandatory=True)
    elapsed = time.perf_counter() - started
    connection.close()
    return {"count": count, "seconds": elapsed}


async def _aio_pika_publish_one(plan: Plan, count: int) -> dict[str, Any]:
    events = [(codec.encode(e), e) for e in (new_event(seq) for seq in range(count))]
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(plan.exchange, ensure=False)

    def message(body: bytes, event: Any) -> aio_pika.Message:
        return aio_pika.Message(body, content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=event.get_message_id(), type=event.message_name,
                                timestamp=time.time())

    await exchange.publish(message(*events[0]), plan.routing_key, mandatory=True)  # warm-up
    started = time.perf_counter()
    for body, event in events:
        await exchange.publish(message(body, event), plan.routing_key, mandatory=True)
    elapsed = time.perf_counter() - started
    await connection.close()
    return {"count": count, "seconds": elapsed}


def aio_pika_publish_one(plan: Plan, count: int) -> dict[str, Any]:
    """aio-pika, confirms on: ``await exchange.publish(...)`` one after the other."""
    return asyncio.run(_aio_pika_publish_one(plan, count))


async def _aiormq_publish_batch(plan: Plan, count: int, window: int = 256) -> dict[str, Any]:
    bodies = _bodies(count)
    connection = await aiormq.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.basic_publish(b"{}", exchange=plan.exchange, routing_key=plan.routing_key,
                                properties=_aiormq_properties("warm-up"), mandatory=True)
    limit = asyncio.Semaphore(window)

    async def one(body: bytes, message_id: str) -> None:
        async with limit:
            confirm = await channel.basic_publish(
                body, exchange=plan.exchange, routing_key=plan.routing_key,
                properties=_aiormq_properties(message_id), mandatory=True)
            if not isinstance(confirm, spec.Basic.Ack):
                raise RuntimeError(f"not confirmed: {confirm!r}")

    started = time.perf_counter()
    await asyncio.gather(*(one(body, mid) for body, mid in bodies))
    elapsed = time.perf_counter() - started
    await connection.close()
    return {"count": count, "seconds": elapsed}


def aiormq_publish_batch(plan: Plan, count: int) -> dict[str, Any]:
    """aiormq, confirms on, 256 publishes in flight (a semaphore), all awaited with gather."""
    return asyncio.run(_aiormq_publish_batch(plan, count))


async def _aiormq_consume(plan: Plan, count: int, prefetch: int = 256) -> dict[str, Any]:
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=prefetch)
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        nonlocal seen
        await channel.basic_ack(message.delivery.delivery_tag)
        seen += 1
        if seen == count and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    await channel.basic_consume(plan.queue, on_message)
    await done
    elapsed = time.perf_counter() - started
    await connection.close()
    return {"count": count, "seconds": elapsed}


def aiormq_consume(plan: Plan, count: int) -> dict[str, Any]:
    """aiormq consumer, prefetch 256, one ack per message."""
    return asyncio.run(_aiormq_consume(plan, count))


def pika_consume(plan: Plan, count: int, prefetch: int = 256) -> dict[str, Any]:
    """pika BlockingConnection consumer, prefetch 256, one ack per message."""
    connection = blocking()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    seen = 0

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal seen
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen == count:
            ch.stop_consuming()

    channel.basic_consume(plan.queue, on_message)
    started = time.perf_counter()
    channel.start_consuming()
    elapsed = time.perf_counter() - started
    connection.close()
    return {"count": count, "seconds": elapsed}


async def _aiormq_latency(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []
    consumer = await aiormq.connect(URL)
    channel = await consumer.channel()
    await channel.basic_qos(prefetch_count=256)
    done = asyncio.get_running_loop().create_future()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        sent_at = json.loads(message.body)["data"]["attributes"]["sent_at"]
        latencies.append(time.perf_counter() - sent_at)
        await channel.basic_ack(message.delivery.delivery_tag)
        if len(latencies) == count and not done.done():
            done.set_result(None)

    await channel.basic_consume(plan.queue, on_message)
    publisher = await aiormq.connect(URL)
    out = await publisher.channel(publisher_confirms=True)

    async def send(seq: int) -> None:
        event = new_event(seq, time.perf_counter())
        await out.basic_publish(codec.encode(event), exchange=plan.exchange,
                                routing_key=plan.routing_key,
                                properties=_aiormq_properties(event.get_message_id()), mandatory=True)

    await _paced(send, count, rate)
    await done
    await publisher.close()
    await consumer.close()
    return {"count": count, "latencies": latencies}


async def _paced(send: Any, count: int, rate: float) -> None:
    """Start ``send(i)`` at ``rate`` per second (each as a task), then wait for all."""
    tasks = []
    started = time.perf_counter()
    for seq in range(count):
        delay = started + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(seq)))
    await asyncio.gather(*tasks)


def aiormq_latency(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    """aiormq publisher (confirms) and consumer in one loop: publish-to-callback latency."""
    return asyncio.run(_aiormq_latency(plan, count, rate))


async def _aiormq_retry(plan: Plan, count: int, prefetch: int = 256) -> dict[str, Any]:
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=prefetch)
    out = await connection.channel(publisher_confirms=True)
    done = asyncio.get_running_loop().create_future()
    handled = 0
    retry_exchange = f"retry.{plan.exchange}"
    retry_key = f"retry.{plan.queue}"
    pending: set[asyncio.Task[None]] = set()

    async def retry(message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        headers = dict(props.headers or {})
        headers["redelivery_count"] = 1
        await out.basic_publish(message.body, exchange=retry_exchange, routing_key=retry_key,
                                properties=spec.Basic.Properties(
                                    content_type=props.content_type, delivery_mode=2,
                                    message_id=props.message_id, message_type=props.message_type,
                                    headers=headers), mandatory=True)
        await channel.basic_ack(message.delivery.delivery_tag)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        nonlocal handled
        headers = message.header.properties.headers or {}
        if not headers.get("redelivery_count"):  # the handler fails the first time
            task = asyncio.ensure_future(retry(message))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return
        await channel.basic_ack(message.delivery.delivery_tag)
        handled += 1
        if handled == count and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    await channel.basic_consume(plan.queue, on_message)
    await done
    elapsed = time.perf_counter() - started
    await asyncio.gather(*pending)  # an original may still wait for its ack
    await connection.close()
    return {"count": count, "seconds": elapsed}


def aiormq_retry(plan: Plan, count: int) -> dict[str, Any]:
    """aiormq consumer whose handling fails once: confirmed copy to the retry queue, then ack."""
    return asyncio.run(_aiormq_retry(plan, count))


PROGRAMS = {
    "pika_publish_one": pika_publish_one,
    "aio_pika_publish_one": aio_pika_publish_one,
    "aiormq_publish_batch": aiormq_publish_batch,
    "aiormq_consume": aiormq_consume,
    "pika_consume": pika_consume,
    "aiormq_latency": aiormq_latency,
    "aiormq_retry": aiormq_retry,
}
