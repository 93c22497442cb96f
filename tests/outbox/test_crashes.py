"""Crash tests with counts, on PostgreSQL and RabbitMQ: a relay killed with SIGKILL inside a
batch, the broker connection cut while relaying, a handler process killed after its commit and
before its ack. Committed messages are published at least once, rolled-back ones never, and an
idempotent handler's effects happen exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from eventyard import MessageSubscriber, TopologyOptions, naming
from eventyard.outbox import Outbox, OutboxRelay, RelaySettings, pending_count
from eventyard.ports import OutgoingMessage, Transport
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer
from support.broker import RabbitBroker
from support.scripts import Script
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

from .conftest import Database, OrderPlaced, eventually

HERE = Path(__file__).parent
OPTIONS = TopologyOptions(store=False)


def record_order(event: OrderPlaced) -> None:
    """Stands for the consumer script's handler: same name, so the same queue."""


@pytest.fixture
def queue(rabbit: RabbitBroker, org: str) -> Iterator[str]:
    """acme-like org's shop service with one subscriber queue for OrderPlaced; deleted after."""
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [record_order])]
    connector = RabbitMqConnector(rabbit.url)
    configurer = RabbitMqMessageConfigurer(connector, org, "shop", options=OPTIONS)
    try:
        configurer.configure_subscribers(subscribers)
        yield naming.queue(org, "shop", 1, "event", "order.placed", "record_order")
    finally:
        configurer.clear_subscribers(subscribers)
        configurer.clear()
        connector.close()


def commit_orders(engine: Engine, org: str, transactions: int, per_transaction: int,
                  rolled_back: int = 0) -> set[str]:
    """Store orders in committed (and rolled-back) transactions; return the committed ids."""
    outbox = Outbox(org, "shop")
    committed: set[str] = set()
    for t in range(transactions + rolled_back):
        events = [OrderPlaced(order=t * per_transaction + o, batch=t) for o in range(per_transaction)]
        with Session(engine) as session:
            outbox.publish(session, events)
            if t < transactions:
                session.commit()
                committed.update(e.get_message_id() for e in events)
            else:
                session.rollback()
    return committed


def counts(taken: Sequence[tuple[bytes, object, str]], committed: set[str]) -> dict[str, int]:
    ids = [json.loads(body)["data"]["id"] for body, _, _ in taken]
    unique = set(ids)
    return {"committed": len(committed), "published": len(ids),
            "duplicates": len(ids) - len(unique), "lost": len(committed - unique),
            "not committed": len(unique - committed)}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), *sys.path])}


@pytest.mark.rabbitmq
def test_a_relay_killed_inside_a_batch_and_restarted_loses_nothing(
        database: Database, sync_engine: Engine, rabbit: RabbitBroker, org: str, queue: str) -> None:
    committed = commit_orders(sync_engine, org, transactions=5, per_transaction=100, rolled_back=2)
    relay = Script(HERE / "relay_script.py", env(), database.async_url, rabbit.url, "100", "3")
    try:
        wait_until(lambda: any(line.startswith("paused") for line in relay.stdout), 30,
                   "the relay to stop inside its third batch")
        # Batches 4 and 5 go past it (two batches in flight) and are marked sent.
        wait_until(lambda: _pending(sync_engine) == 100, 30, "batches 4 and 5 to be marked sent")
    finally:
        os.kill(relay.process.pid, signal.SIGKILL)
        relay.process.wait(10)
    assert relay.process.returncode == -signal.SIGKILL
    assert _pending(sync_engine) == 100  # the third batch was confirmed, never marked sent

    restarted = subprocess.Popen(
        [str(Path(sys.executable).parent / "eventyard"), "outbox", "relay", "--db", database.plain_url,
         "--url", rabbit.url, "--batch-size", "100", "--poll-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _pending(sync_engine) == 0 or restarted.poll() is not None, 30,
                   "the restarted relay to send the rest")
    finally:
        restarted.send_signal(signal.SIGTERM)
        stdout, stderr = restarted.communicate(timeout=20)
    assert restarted.returncode == 0, stderr
    assert "published 100" in stdout
    assert "relaying" in stderr and ":guest@" not in stderr  # the password is never shown

    found = counts(rabbit.inspector.take(queue, 10_000), committed)
    print(f"relay killed with SIGKILL: {found}")
    assert found == {"committed": 500, "published": 600, "duplicates": 100, "lost": 0,
                     "not committed": 0}


@pytest.mark.rabbitmq
async def test_a_cut_broker_connection_while_relaying_loses_nothing(
        engine: AsyncEngine, sync_engine: Engine, rabbit: RabbitBroker, org: str, queue: str) -> None:
    committed = await asyncio.to_thread(commit_orders, sync_engine, org, 10, 100, 1)
    proxy = TcpProxy(rabbit.url)
    cuts: list[int] = []
    try:
        async with RabbitMqConnector(proxy.url()) as connector:
            calls = 0

            class Cutting:
                """The connector's transport; the proxy drops it while batch 3 is in flight."""

                def __init__(self, real: Transport) -> None:
                    self.real = real

                async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
                    nonlocal calls
                    calls += 1
                    if calls == 3:
                        asyncio.get_running_loop().call_soon(lambda: cuts.append(proxy.cut()))
                    return await self.real.publish(messages)

            async def transports() -> Transport:
                return Cutting(await connector.publisher_transport())  # type: ignore[return-value]

            relay = OutboxRelay(engine, transports, RelaySettings(
                batch_size=100, poll_interval=0.2, retry_delay=0.05))
            relay.start()
            try:
                await eventually(lambda: _none_pending(engine), 30, "every row sent")
            finally:
                await relay.stop()
    finally:
        proxy.close()
    found = counts(await asyncio.to_thread(rabbit.inspector.take, queue, 10_000), committed)
    print(f"broker connection cut while relaying: {found}, connections cut {cuts}")
    assert cuts and cuts[0] >= 1
    assert calls > 10  # the failed batch was tried again
    assert found["lost"] == 0 and found["not committed"] == 0 and found["committed"] == 1000
    assert found["duplicates"] <= 100  # at most the batch in flight


@pytest.mark.rabbitmq
def test_a_handler_killed_after_its_commit_and_before_its_ack_takes_effect_once(
        database: Database, sync_engine: Engine, rabbit: RabbitBroker, org: str, queue: str) -> None:
    with sync_engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (order_id int)"))
    committed = commit_orders(sync_engine, org, transactions=4, per_transaction=5, rolled_back=1)
    relay = Script(HERE / "relay_script.py", env(),
                   database.async_url, rabbit.url, "100", "0")
    first = Script(HERE / "consumer_script.py", env(), database.async_url, rabbit.url, org, "7")
    second = None
    try:
        first.process.wait(60)
        assert first.process.returncode == -signal.SIGKILL, first.output()
        second = Script(HERE / "consumer_script.py", env(), database.async_url, rabbit.url, org, "-1")
        wait_until(lambda: _scalar(sync_engine, "SELECT count(*) FROM effects") >= 20, 30,
                   "every order's effect")
        wait_until(lambda: any("consuming" in line for line in second.stdout), 10, "the consumer")
    finally:
        for script in (relay, second):
            if script is not None and script.process.poll() is None:
                script.process.send_signal(signal.SIGTERM)
                script.process.wait(20)
    runs = [line for script in (first, second) if script for line in script.stdout
            if line.startswith("ran ")]
    effects = _scalar(sync_engine, "SELECT count(*) FROM effects")
    distinct = _scalar(sync_engine, "SELECT count(DISTINCT order_id) FROM effects")
    found = {"committed": len(committed), "published": _scalar(
        sync_engine, "SELECT count(*) FROM eventyard_outbox WHERE sent_at IS NOT NULL"),
        "handled": len(runs), "effects": effects,
        "inbox rows": _scalar(sync_engine, "SELECT count(*) FROM eventyard_inbox")}
    print(f"handler killed after commit, before ack: {found}")
    assert found == {"committed": 20, "published": 20, "handled": 20, "effects": 20,
                     "inbox rows": 20}
    assert distinct == 20
    assert "ran 7\n" in first.stdout and "ran 7\n" not in second.stdout  # acked, not run again
    assert rabbit.inspector.count(queue) == 0


def _scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(text(sql)) or 0)


def _pending(engine: Engine) -> int:
    return _scalar(engine, "SELECT count(*) FROM eventyard_outbox WHERE sent_at IS NULL")


async def _none_pending(engine: AsyncEngine) -> bool:
    return await pending_count(engine) == 0
