"""Quorum queues on a three-node cluster: a node killed under load loses no confirmed event,
and consumers fail over to another node by themselves (DESIGN §11, issue 14).

Each test prints its counts: confirmed (distinct events RabbitMQ confirmed), handled, duplicates
(handled more than once: allowed, at-least-once), lost (confirmed, never handled: must be 0),
and the publish calls that failed during the loss and were made again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from eventyard import DomainEvent, MessageSubscriber, Uuid
from eventyard.errors import BrokerConnectionError, PublishNackedError, PublishTimeoutError
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.rabbitmq.transport import RabbitMqTransport
from eventyard.topology import TopologyOptions
from support.cluster import Cluster, ClusterNode
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

OPTIONS = TopologyOptions(queue_type="quorum", retry_ttl_ms=200, store=False)
BATCH = 25
QUEUE = "logistics.depot.1.event.parcel_shipped.count_parcel"
REPORTED: list[str] = []  # printed at the end of the session (conftest)


class ParcelShipped(DomainEvent):
    parcel_id: Uuid


@dataclass
class Tally:
    """What was confirmed and what was handled, thread-safe."""

    confirmed: list[str] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    failed_publishes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> Callable[[ParcelShipped], None]:
        def count_parcel(event: ParcelShipped) -> None:
            with self.lock:
                self.handled.append(event.parcel_id)
        return count_parcel

    def everything_handled(self) -> bool:
        with self.lock:
            return set(self.confirmed) <= set(self.handled)

    def report(self, what: str) -> dict[str, int]:
        with self.lock:
            confirmed, handled = set(self.confirmed), Counter(self.handled)
        counts = {"confirmed": len(confirmed), "handled": len(handled),
                  "duplicates": sum(n - 1 for n in handled.values()),
                  "lost": len(confirmed - set(handled)),
                  "failed_publishes_retried": self.failed_publishes}
        REPORTED.append(f"{what}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        print(REPORTED[-1])
        return counts


def url_of(nodes: list[ClusterNode]) -> str:
    """A fail-over URL naming ``nodes`` in this order."""
    return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{n.port}" for n in nodes) + "/"


def publish_confirmed(bus: RabbitMqDomainEventBus, tally: Tally, count: int) -> None:
    """Publish ``count`` events; a batch whose publish raised is published again whole."""
    events = [ParcelShipped(parcel_id=Uuid.v4()) for _ in range(count)]
    deadline = time.monotonic() + 60
    while True:
        try:
            bus.publish(events)
        except (BrokerConnectionError, PublishNackedError, PublishTimeoutError):
            # Not confirmed: maybe stored, maybe not. Publishing again may duplicate, never lose.
            tally.failed_publishes += 1
            if time.monotonic() > deadline:
                raise
            continue
        with tally.lock:
            tally.confirmed += [e.parcel_id for e in events]
        return


def consumer_transport(consumer: RabbitMqMessageConsumer) -> RabbitMqTransport:
    """The consumer's connection (private: the test needs to know its node)."""
    transport = consumer.engine._transport
    assert isinstance(transport, RabbitMqTransport)
    return transport


def connected_port(consumer: RabbitMqMessageConsumer) -> int:
    """The port of the node ``consumer`` is connected to."""
    connection = consumer_transport(consumer)._connection
    assert connection is not None and connection.url.port is not None
    return connection.url.port


def queue_leader(cluster: Cluster, vhost: str, queue: str) -> str:
    """The node that leads quorum queue ``queue``, as a running node tells."""
    node = cluster.alive()[0]
    rows = json.loads(node.ctl("list_queues", "-p", vhost, "-q", "--formatter", "json",
                               "name", "type", "leader", "members"))
    row = next(r for r in rows if r["name"] == queue)
    assert row["type"] == "quorum" and len(row["members"]) == 3, row
    return str(row["leader"])


def on_vhost(url: str, vhost: str) -> str:
    return url.rstrip("/") + "/" + vhost


def test_clients_fail_over_when_their_node_is_killed_under_load(cluster: Cluster,
                                                                vhost: str) -> None:
    first, second, third = cluster.nodes
    tally = Tally()
    subscribers = [MessageSubscriber.from_message(ParcelShipped, [tally.handler()])]
    # The queue's leader on the third node; the publisher and the consumer on the first, which
    # is killed while both work: publishes in flight and unacknowledged deliveries are cut.
    declaring = RabbitMqConnector(on_vhost(url_of([third, second, first]), vhost))
    publishing = RabbitMqConnector(on_vhost(url_of([first, second, third]), vhost))
    consuming = RabbitMqConnector(on_vhost(url_of([first, second, third]), vhost))
    killed_at: list[int] = []

    def kill_mid_load() -> None:
        wait_until(lambda: len(tally.confirmed) >= 10 * BATCH, timeout=60, what="some load")
        killed_at.append(len(tally.confirmed))
        first.kill()

    try:
        RabbitMqMessageConfigurer(declaring, "logistics", "depot",
                                  options=OPTIONS).configure_subscribers(subscribers)
        assert queue_leader(cluster, vhost, QUEUE) == third.nodename
        consumer = RabbitMqMessageConsumer(consuming, "logistics", "depot", 3, prefetch=20,
                                           options=OPTIONS)
        consumer.add_subscribers(subscribers)
        consumer.start()
        bus = RabbitMqDomainEventBus(publishing, "logistics", "depot")
        killer = threading.Thread(target=kill_mid_load)
        try:
            assert connected_port(consumer) == first.port
            killer.start()
            for _ in range(60):
                publish_confirmed(bus, tally, BATCH)
            killer.join(60)
            wait_until(lambda: consumer_transport(consumer).reconnections >= 1, timeout=30,
                       what="the consumer to reconnect")
            assert connected_port(consumer) in (second.port, third.port)
            wait_until(tally.everything_handled, timeout=60,
                       what="every confirmed event to be handled after the fail-over")
        finally:
            consumer.stop()
        counts = tally.report("publisher's and consumer's node killed under load")
        assert killed_at and killed_at[0] < 60 * BATCH  # the kill came while publishing
        assert counts["confirmed"] == 60 * BATCH
        assert counts["lost"] == 0
        first.start()  # brought back: it rejoins the cluster and its queue replicas
        wait_until(lambda: len(cluster.running_nodes(via=second)) == 3, timeout=30,
                   what="the killed node to rejoin")
        RabbitMqMessageConfigurer(declaring, "logistics", "depot",
                                  options=OPTIONS).clear_subscribers(subscribers)
    finally:
        for connector in (consuming, publishing, declaring):
            connector.close()


@pytest.mark.leaves_a_node_down
def test_quorum_queue_keeps_its_messages_when_its_leader_is_killed(cluster: Cluster,
                                                                   vhost: str) -> None:
    tally = Tally()
    subscribers = [MessageSubscriber.from_message(ParcelShipped, [tally.handler()])]
    url = on_vhost(cluster.url, vhost)
    publishing = RabbitMqConnector(url)
    consuming = RabbitMqConnector(url)
    try:
        configurer = RabbitMqMessageConfigurer(publishing, "logistics", "depot", options=OPTIONS)
        configurer.configure_subscribers(subscribers)
        bus = RabbitMqDomainEventBus(publishing, "logistics", "depot")
        for _ in range(20):  # a backlog nobody consumes yet
            publish_confirmed(bus, tally, BATCH)
        leader = queue_leader(cluster, vhost, QUEUE)
        killed = next(n for n in cluster.nodes if n.nodename == leader)
        killed.kill()
        consumer = RabbitMqMessageConsumer(consuming, "logistics", "depot", 3, prefetch=20,
                                           options=OPTIONS)
        consumer.add_subscribers(subscribers)
        consumer.start()
        try:
            for _ in range(20):  # more while the queue runs on two of its three members
                publish_confirmed(bus, tally, BATCH)
            wait_until(tally.everything_handled, timeout=60,
                       what="the backlog and the later events to be handled")
        finally:
            consumer.stop()
        counts = tally.report("quorum leader killed with a backlog")
        assert counts["confirmed"] == 40 * BATCH
        assert counts["lost"] == 0
        assert queue_leader(cluster, vhost, QUEUE) != leader
        # Nothing cleared: deleting a quorum queue while one of its members is down waits 15 s
        # on it, and the vhost goes with the cluster.
    finally:
        for connector in (consuming, publishing):
            connector.close()
