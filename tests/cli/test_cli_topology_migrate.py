"""``eventyard topology migrate``: a service's classic queues become quorum queues on the test
broker (a vhost of the test's own: quorum queues work on one node), with messages in every kind
of queue and a publisher publishing throughout; nothing lost, nothing changed by a dry run.

Each run prints its counts: messages before and after per queue, lost (must be 0) and
duplicates (a message published while a queue's bindings move may be routed twice).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiormq
import pytest
from pamqp import commands as spec
from typer.testing import CliRunner

from eventyard import DomainEvent, MessageSubscriber, RetryPolicy, Uuid, naming
from eventyard.cli.main import app
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.rabbitmq.migrating import temporary_queue
from eventyard.subscribers import subscriptions_of
from eventyard.topology import Topology, TopologyOptions, build_topology
from support.vhost import PrivateVhost

pytestmark = pytest.mark.rabbitmq

ORG, SVC = "acme", "shipping"
TTL = 600_000  # retry TTL: messages parked in retry queues stay there during the test
LONG_DELAY = 3_276_800  # a delay-ladder level (ms) whose copies stay put during the test
ARGS = ["-o", ORG, "-s", SVC, "--retry-ttl", str(TTL)]
APP = "cli.test_cli_topology_migrate:subscribers"


class ParcelPacked(DomainEvent):
    parcel_id: Uuid


class ParcelLabelled(DomainEvent):
    parcel_id: Uuid


def weigh_parcel(event: ParcelPacked) -> None:
    """Never runs: the test migrates queues nobody consumes."""


def print_label(event: ParcelLabelled) -> None:
    """Never runs either."""


def subscribers() -> list[MessageSubscriber]:
    """Two subscribers, one with a delay ladder (its own retry policy), and the store."""
    return [MessageSubscriber.from_message(ParcelPacked, [weigh_parcel],
                                           retry=RetryPolicy(delays_ms=[1000, 60_000])),
            MessageSubscriber.from_message(ParcelLabelled, [print_label])]


def topology(queue_type: str) -> Topology:
    options = TopologyOptions(retry_ttl_ms=TTL, queue_type=queue_type)  # type: ignore[arg-type]
    return build_topology(ORG, SVC, subscriptions_of(subscribers()), options)


PACKED = naming.queue(ORG, SVC, 1, "event", "parcel_packed", "weigh_parcel")
LABELLED = naming.queue(ORG, SVC, 1, "event", "parcel_labelled", "print_label")
DELAY = naming.delay_queue(ORG, SVC, LONG_DELAY)


def listed(vhost: PrivateVhost) -> dict[str, dict[str, Any]]:
    """Each queue of the vhost: type and arguments (the inspector), ready messages and consumers
    (passive declares: the broker's own counts at this moment)."""
    described = vhost.inspector.described()
    states = asyncio.run(_states(vhost.url, sorted(described)))
    return {name: {"name": name, "type": described[name]["type"],
                   "arguments": described[name]["arguments"], "messages_ready": ready,
                   "consumers": consumers}
            for name, (ready, consumers) in states.items()}


async def _states(url: str, queues: list[str]) -> dict[str, tuple[int, int]]:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        states = {}
        for queue in queues:
            ok = await channel.queue_declare(queue, passive=True)
            states[queue] = (int(ok.message_count or 0), int(ok.consumer_count or 0))
        return states
    finally:
        await connection.close()


Held = list[tuple[str, bytes, dict[str, Any], str | None]]


async def _read(url: str, queue: str) -> Held:
    """Every message of ``queue`` (id, body, headers, expiration), left in place."""
    connection = await aiormq.connect(url)
    held: Held = []
    try:
        channel = await connection.channel()
        while True:
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetEmpty):
                break
            p = message.header.properties
            headers = dict(p.headers or {})
            headers.pop("x-delivery-count", None)  # a quorum queue's count of this very read
            held.append((str(p.message_id), bytes(message.body), headers, p.expiration))
        await channel.close()  # unacked: every message goes back
    finally:
        await connection.close()
    return sorted(held, key=lambda m: m[0])


def read(url: str, queue: str) -> Held:
    return asyncio.run(_read(url, queue))


async def _put(url: str, queue: str, count: int,
               headers: Callable[[int], dict[str, Any]] | None = None,
               expiration: str | None = None) -> None:
    """``count`` persistent messages straight into ``queue``, confirmed."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await asyncio.gather(*(channel.basic_publish(
            f'{{"n": {n}, "queue": "{queue}"}}'.encode(), routing_key=queue,
            properties=spec.Basic.Properties(
                delivery_mode=2, message_id=f"{queue}-{n:04}", content_type="application/json",
                headers=headers(n) if headers else None, expiration=expiration, message_type="parcel_packed"))
            for n in range(count)))
    finally:
        await connection.close()


def dead_letter_headers(n: int) -> dict[str, Any]:
    """Headers like those of a message dead-lettered after its retries (nested, typed)."""
    return {"x-death": [{"count": 3, "reason": "rejected", "queue": PACKED,
                         "time": datetime(2026, 11, 28, 10, 0, n % 60, tzinfo=UTC),
                         "exchange": f"retry.{ORG}.{SVC}", "routing-keys": [f"retry.{PACKED}"]}],
            "x-first-death-queue": PACKED, "x-first-death-reason": "rejected",
            "eventyard-error-type": "ScaleOffline", "eventyard-error": f"scale {n} offline",
            "eventyard-attempts": 4, "eventyard-delays": [1000, 60_000]}


def fill(vhost: PrivateVhost, bus: RabbitMqDomainEventBus) -> None:
    """720 persistent messages spread over main, store, retry, delay and dead-letter queues."""
    bus.publish([ParcelPacked(parcel_id=Uuid.v4()) for _ in range(200)])  # PACKED and store
    bus.publish([ParcelLabelled(parcel_id=Uuid.v4()) for _ in range(100)])  # LABELLED and store
    asyncio.run(_put(vhost.url, f"retry.{PACKED}", 40))
    asyncio.run(_put(vhost.url, f"retry.{LABELLED}", 10, expiration="500000"))  # own TTL
    asyncio.run(_put(vhost.url, DELAY, 20))
    asyncio.run(_put(vhost.url, f"dead_letter.{PACKED}", 50, dead_letter_headers))


def test_migrate_moves_every_queue_to_quorum_with_its_messages_while_publishing(
        vhost: PrivateVhost) -> None:
    connector = RabbitMqConnector(vhost.url)
    classic, quorum = topology("classic"), topology("quorum")
    owned = [q.name for q in classic.queues]
    try:
        RabbitMqMessageConfigurer(connector, ORG, SVC, options=TopologyOptions(
            retry_ttl_ms=TTL)).configure_subscribers(subscribers())
        bus = RabbitMqDomainEventBus(connector, ORG, SVC)
        fill(vhost, bus)
        before = {name: read(vhost.url, name) for name in owned}
        assert sum(len(held) for held in before.values()) == 720  # the store holds 300 of them
        assert len(owned) == 30

        published: list[str] = []
        stop = threading.Event()

        def publish_throughout() -> None:
            while not stop.wait(0.01):  # paced: a steady trickle, not a flood
                event = ParcelPacked(parcel_id=Uuid.v4())
                bus.publish(event)  # returns once RabbitMQ confirmed it
                published.append(event.get_message_id())

        publisher = threading.Thread(target=publish_throughout)
        publisher.start()
        started = time.monotonic()
        try:
            result = CliRunner(env={"RABBITMQ_URL": vhost.url, "COLUMNS": "200"}).invoke(
                app, ["topology", "migrate", APP, *ARGS, "--to", "quorum", "--yes", "--json"])
        finally:
            stop.set()
            publisher.join(30)
        print(f"\nmigration took {time.monotonic() - started:.1f} s")
        during = len(published)
        for _ in range(20):  # and after: into the new quorum queues
            event = ParcelPacked(parcel_id=Uuid.v4())
            bus.publish(event)
            published.append(event.get_message_id())
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)

        held = listed(vhost)
        assert not [n for n in held if n.startswith("migrating.")]  # temporary queues gone
        for queue in quorum.queues:
            assert held[queue.name]["type"] == "quorum", queue.name
            assert held[queue.name]["arguments"] == dict(queue.arguments), queue.name
            assert held[queue.name]["consumers"] == 0
        bound = vhost.inspector.bindings("")
        assert bound == {(b.exchange, b.queue, b.routing_key) for b in quorum.bindings}

        after = {name: read(vhost.url, name) for name in owned}
        lines = []
        for name in owned:
            old, new = before[name], after[name]
            expected = Counter(m[0] for m in old)
            if name in (PACKED, "store"):
                expected.update(published)
            got = Counter(m[0] for m in new)
            lost = sorted(set(expected) - set(got))
            duplicates = sum(got.values()) - len(got)
            if old or name in (PACKED, "store"):
                lines.append(f"{name}: before {len(old)}, published {len(expected) - len(old)}, "
                             f"after {sum(got.values())}, lost {len(lost)}, duplicates {duplicates}")
            assert lost == [] and set(got) == set(expected), name
            # Only a publish racing a binding's move is routed twice, never a message moved.
            assert {i for i, n in got.items() if n > 1} <= set(published[:during]), name
            kept = {m[0]: m for m in new}
            for message in old:  # body, headers and own TTL exactly as they were
                assert kept[message[0]][1:] == message[1:], (name, message[0])
        assert len(after[f"dead_letter.{PACKED}"]) == 50
        assert after[f"dead_letter.{PACKED}"][7][2] == dead_letter_headers(7)  # ids sort by n
        assert {m[3] for m in after[f"retry.{LABELLED}"]} == {"500000"}
        print(f"\n{time.monotonic() - started:.1f} s: migrate to quorum with {during} + 20 "
              "events published during and after:")
        print("\n".join(lines))
        assert report["moved"][PACKED] >= 200 and during > 0
        assert {q["action"] for q in report["queues"]} == {"recreate"}
    finally:
        connector.close()


def test_dry_run_plans_and_changes_nothing(vhost: PrivateVhost) -> None:
    connector = RabbitMqConnector(vhost.url)
    try:
        RabbitMqMessageConfigurer(connector, ORG, SVC, options=TopologyOptions(
            retry_ttl_ms=TTL)).configure_subscribers(subscribers())
        RabbitMqDomainEventBus(connector, ORG, SVC).publish(
            [ParcelPacked(parcel_id=Uuid.v4()) for _ in range(30)])
        asyncio.run(_put(vhost.url, f"dead_letter.{PACKED}", 5, dead_letter_headers))
        before, bindings = listed(vhost), vhost.inspector.bindings("")
        messages = read(vhost.url, f"dead_letter.{PACKED}")
        runner = CliRunner(env={"RABBITMQ_URL": vhost.url, "COLUMNS": "200"})
        plan = runner.invoke(app, ["topology", "migrate", APP, *ARGS, "--to", "quorum",
                                   "--dry-run", "--json"])
        text = runner.invoke(app, ["topology", "migrate", APP, *ARGS, "--to", "quorum",
                                   "--dry-run"])
        after = listed(vhost)
        assert plan.exit_code == 0, plan.output
        report = json.loads(plan.stdout)
        assert report["dry_run"] is True and report["moved"] == {}
        rows = {q["name"]: q for q in report["queues"]}
        assert rows[PACKED]["action"] == "recreate" and rows[PACKED]["messages"] == 30
        assert "x-queue-type" in rows[PACKED]["reason"] or "inequivalent arg" in rows[PACKED]["reason"]
        assert text.exit_code == 0 and "dry run: nothing changed" in text.stdout
        assert after == before  # types, arguments, counts
        assert vhost.inspector.bindings("") == bindings
        assert read(vhost.url, f"dead_letter.{PACKED}") == messages
    finally:
        connector.close()


def test_migrate_refuses_while_a_consumer_is_attached(vhost: PrivateVhost) -> None:
    connector = RabbitMqConnector(vhost.url)
    options = TopologyOptions(retry_ttl_ms=TTL)
    try:
        RabbitMqMessageConfigurer(connector, ORG, SVC, options=options).configure_subscribers(
            subscribers())
        consumer = RabbitMqMessageConsumer(connector, ORG, SVC, 1, options=options)
        consumer.add_subscribers(subscribers())
        consumer.start()
        try:
            before = listed(vhost)
            result = CliRunner(env={"RABBITMQ_URL": vhost.url, "COLUMNS": "200"}).invoke(
                app, ["topology", "migrate", APP, *ARGS, "--to", "quorum", "--yes"])
            after = listed(vhost)
        finally:
            consumer.stop()
        assert result.exit_code == 1
        assert "cannot migrate: consumers are attached to" in result.stderr
        assert PACKED in result.stderr and "nothing was changed" in result.stderr
        assert after == before
    finally:
        connector.close()


def test_a_rerun_first_moves_back_what_an_interrupted_run_left(vhost: PrivateVhost) -> None:
    connector = RabbitMqConnector(vhost.url)
    try:
        RabbitMqMessageConfigurer(connector, ORG, SVC, options=TopologyOptions(
            retry_ttl_ms=TTL, queue_type="quorum")).configure_subscribers(subscribers())
        # Cut between "delete the classic queue" and "declare it as quorum": the messages wait
        # in the temporary queue, the queue itself is gone.
        temporary = temporary_queue(f"dead_letter.{PACKED}")
        asyncio.run(_declare_and_delete(vhost.url, temporary, f"dead_letter.{PACKED}"))
        asyncio.run(_put(vhost.url, temporary, 25, dead_letter_headers))
        left = read(vhost.url, temporary)
        result = CliRunner(env={"RABBITMQ_URL": vhost.url, "COLUMNS": "200"}).invoke(
            app, ["topology", "migrate", APP, *ARGS, "--to", "quorum", "--yes", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        held = listed(vhost)
        assert temporary not in held
        assert held[f"dead_letter.{PACKED}"]["type"] == "quorum"
        assert report["moved"] == {f"dead_letter.{PACKED}": 25}
        assert read(vhost.url, f"dead_letter.{PACKED}") == left
        assert (f"dead_letter.{ORG}.{SVC}", f"dead_letter.{PACKED}",
                f"dead_letter.{PACKED}") in vhost.inspector.bindings("")
    finally:
        connector.close()


async def _declare_and_delete(url: str, temporary: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(temporary, durable=True)
        await channel.queue_delete(queue)
    finally:
        await connection.close()


def test_migrate_to_classic_moves_quorum_queues_back(vhost: PrivateVhost) -> None:
    connector = RabbitMqConnector(vhost.url)
    classic = topology("classic")
    try:
        RabbitMqMessageConfigurer(connector, ORG, SVC, options=TopologyOptions(
            retry_ttl_ms=TTL, queue_type="quorum")).configure_subscribers(subscribers())
        fill(vhost, RabbitMqDomainEventBus(connector, ORG, SVC))
        before = {q.name: read(vhost.url, q.name) for q in classic.queues}
        result = CliRunner(env={"RABBITMQ_URL": vhost.url, "COLUMNS": "200"}).invoke(
            app, ["topology", "migrate", APP, *ARGS, "--to", "classic", "--yes"])
        assert result.exit_code == 0, result.output
        assert "Done: 720 messages moved back into 30 queues" in result.stdout
        held = listed(vhost)
        assert sorted(held) == sorted(before)  # no temporary queue left
        for queue in classic.queues:
            assert held[queue.name]["type"] == "classic", queue.name
            assert held[queue.name]["arguments"] == dict(queue.arguments), queue.name
        assert {q.name: read(vhost.url, q.name) for q in classic.queues} == before
    finally:
        connector.close()
