"""Outbox programs (issue 16): what the transactional outbox costs beside a plain publish.

Each program makes a PostgreSQL database of its own (``EVENTYARD_BENCH_POSTGRES``, default
postgresql://postgres@127.0.0.1:5432, trust auth), applies the outbox schema, and drops the
database after. They publish to the plan's topology on the shared RabbitMQ, as the other
programs do.

- ``eventyard_outbox_relay``: ``count`` events committed in transactions of 100 (timed apart,
  as ``commit_seconds``), then a started relay (default settings) drains them: its rate is
  the relay's alone.
- ``eventyard_outbox_commit_relay``: the same transactions committed while a started relay
  (woken by NOTIFY) publishes: events committed and relayed per second, first commit to last
  confirm.
- ``eventyard_outbox_latency``: one event per transaction at a steady ``rate``, committed by
  another process; the time from each commit (sent) to its handler, on an async consumer in
  the loop of the relay. ``eventyard_outbox_latency_one_loop``: the commits in that loop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from benchmarks.common import SERVICE, URL, BenchEvent, Plan, new_event, subscriber

SERVER = os.environ.get("EVENTYARD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
PER_TRANSACTION = 100


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[Any]:
    """An asyncpg engine on a fresh database with the outbox schema; dropped after."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from eventyard.outbox import apply_schema_async

    name = f"eventyard_bench_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(_admin, f'CREATE DATABASE "{name}"')
    url = SERVER.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(f"{url}/{name}", pool_size=20)
    try:
        await apply_schema_async(engine)
        yield engine
    finally:
        await engine.dispose()
        await asyncio.to_thread(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _commit_all(sessions: Any, outbox: Any, count: int, start: int = 0) -> None:
    for first in range(start, start + count, PER_TRANSACTION):
        async with sessions() as session, session.begin():
            outbox.publish(session, [new_event(seq) for seq in
                                     range(first, min(start + count, first + PER_TRANSACTION))])


async def _relay_setup(plan: Plan, engine: Any) -> tuple[Any, Any, Any, Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from eventyard.outbox import Outbox, OutboxRelay, RelaySettings
    from eventyard.rabbitmq import RabbitMqConnector

    connector = RabbitMqConnector(URL)
    sessions = async_sessionmaker(engine)
    outbox = Outbox(plan.org, SERVICE)
    relay = OutboxRelay(engine, connector.publisher_transport, RelaySettings(batch_size=500))
    await _commit_all(sessions, outbox, 1, start=-1)  # warm-up (seq -1): connects, caches
    assert await relay.relay_once() == 1
    return connector, sessions, outbox, relay


async def _relay(plan: Plan, count: int) -> dict[str, Any]:
    async with _database() as engine:
        connector, sessions, outbox, relay = await _relay_setup(plan, engine)
        started = time.perf_counter()
        await _commit_all(sessions, outbox, count)
        committed = time.perf_counter() - started
        started = time.perf_counter()
        relay.start()  # as in a service: batches in flight, until none is full
        while relay.published < count + 1:  # noqa: ASYNC110 (the relay has no event for this)
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        await relay.stop()
        await connector.aclose()
    return {"count": count, "seconds": elapsed, "commit_seconds": committed}


def relay(plan: Plan, count: int) -> dict[str, Any]:
    """Commit ``count`` events (transactions of 100), then time one relay draining them."""
    return asyncio.run(_relay(plan, count))


async def _commit_relay(plan: Plan, count: int) -> dict[str, Any]:
    async with _database() as engine:
        connector, sessions, outbox, relay = await _relay_setup(plan, engine)
        relay.start()
        started = time.perf_counter()
        await _commit_all(sessions, outbox, count)
        committed = time.perf_counter() - started
        while relay.published < count + 1:  # noqa: ASYNC110 (the relay has no event for this)
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        await relay.stop()
        await connector.aclose()
    return {"count": count, "seconds": elapsed, "commit_seconds": committed}


def commit_relay(plan: Plan, count: int) -> dict[str, Any]:
    """Commit ``count`` events while a started relay publishes them: committed and relayed/s."""
    return asyncio.run(_commit_relay(plan, count))


async def _write(url: str, org: str, count: int, rate: float) -> list[float]:
    """Commit one event per transaction at ``rate``/s; return when each commit was sent."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from benchmarks.raw import _paced
    from eventyard.outbox import Outbox

    engine = create_async_engine(url, pool_size=20)
    sessions = async_sessionmaker(engine)
    outbox = Outbox(org, SERVICE)
    committed = [0.0] * count

    async def send(seq: int) -> None:
        async with sessions() as session, session.begin():
            outbox.publish(session, new_event(seq))
            await session.flush()
            # When the commit is sent (the block's end): the time includes the commit's own round
            # trip. (The time it returns is no good: a busy writer may see it after the handler
            # ran.) perf_counter is CLOCK_MONOTONIC, the same in every process.
            committed[seq] = time.perf_counter()

    await _paced(send, count, rate)
    await engine.dispose()
    return committed


def _writer(url: str, org: str, count: int, rate: float, out: Any) -> None:
    out.send(asyncio.run(_write(url, org, count, rate)))


async def _latency(plan: Plan, count: int, rate: float, apart: bool) -> dict[str, Any]:
    import multiprocessing

    from eventyard.consuming import ConsumerSettings
    from eventyard.rabbitmq import AsyncRabbitMqMessageConsumer

    arrived: dict[int, float] = {}
    finished = asyncio.Event()

    async def anoop(event: BenchEvent) -> None:
        if event.seq < 0:  # the warm-up
            return
        arrived[event.seq] = time.perf_counter()
        if len(arrived) >= count:
            finished.set()

    async with _database() as engine:
        connector, _, _, relay = await _relay_setup(plan, engine)
        consumer = AsyncRabbitMqMessageConsumer(connector, plan.org, SERVICE,
                                                settings=ConsumerSettings(prefetch=256))
        consumer.add_subscribers([subscriber(anoop)])
        await consumer.start()
        relay.start()
        url = engine.url.render_as_string(hide_password=False)
        if apart:  # the service that commits is another process (its own CPU and event loop)
            context = multiprocessing.get_context("spawn")
            receiving, sending = context.Pipe(duplex=False)
            writer = context.Process(target=_writer, args=(url, plan.org, count, rate, sending))
            writer.start()
            committed = await asyncio.to_thread(receiving.recv)
            await asyncio.to_thread(writer.join)
        else:
            committed = await _write(url, plan.org, count, rate)
        await asyncio.wait_for(finished.wait(), 120)
        await relay.stop()
        await consumer.stop()
        await connector.aclose()
    return {"count": count, "latencies": [arrived[seq] - committed[seq] for seq in range(count)]}


def latency(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    """One event per transaction at ``rate``/s, committed by another process: commit to
    handler, with the relay and the consumer in one loop (a service relaying and consuming)."""
    return asyncio.run(_latency(plan, count, rate, apart=True))


def latency_one_loop(plan: Plan, count: int, rate: float) -> dict[str, Any]:
    """The same with the committing code in that loop too (one process does everything)."""
    return asyncio.run(_latency(plan, count, rate, apart=False))


PROGRAMS: dict[str, Callable[..., dict[str, Any]]] = {
    "eventyard_outbox_relay": relay,
    "eventyard_outbox_commit_relay": commit_relay,
    "eventyard_outbox_latency": latency,
    "eventyard_outbox_latency_one_loop": latency_one_loop,
}
