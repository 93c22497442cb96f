"""The node that leads the queue killed while a consumer connected to it consumes.

RabbitMQ 3.10 refuses every publish to a quorum queue on a channel whose first publish to that
queue came while the queue had no leader (the channel's queue client asks the dead leader's node
for its version, gets ``nodedown``, rejects, and never looks again). eventyard opens a new
channel after a refused publish, so publishing resumes once a new leader is known: this test
measures how long that takes, with single events (the blocking publisher, whose connection is
opened only after the kill) and batches, and counts what the consumer handled.

Handlers do not fail here: a retry copy that expires from a retry queue into a queue whose
leader died waited in the retry queue's at-least-once dead-letter area for over a minute on 3.10
(docs/cluster.md); the chaos soak covers retries with the leaders on a surviving node.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import aiormq
import pytest
from pamqp import commands as spec

from cluster.test_node_loss import (
    BATCH,
    OPTIONS,
    QUEUE,
    REPORTED,
    ParcelShipped,
    Tally,
    connected_port,
    on_vhost,
    publish_confirmed,
    queue_leader,
    url_of,
)
from eventyard import MessageSubscriber
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from support.cluster import Cluster
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

ROUNDS = 30


def unsettled(tally: Tally, dead: list[bytes]) -> bool:
    """True while a confirmed event is neither handled nor among the dead letters' bodies."""
    with tally.lock:
        missing = set(tally.confirmed) - set(tally.handled)
    return any(not any(i.encode() in body for body in dead) for i in missing)


def poll(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` came true within ``seconds`` (polled every half second)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)  # polling the broker with a deadline
    return True


async def bodies(url: str, queue: str) -> list[bytes]:
    """The bodies of the messages in ``queue``, left in place."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        found = []
        while True:
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetEmpty):
                break
            found.append(bytes(message.body))
        await channel.close()  # unacked: they stay
        return found
    finally:
        await connection.close()


def test_publishing_resumes_soon_after_the_queue_leaders_node_is_killed_under_a_consumer(
        cluster: Cluster, vhost: str) -> None:
    first, second, third = cluster.nodes
    tally = Tally()
    count_parcel = tally.handler()
    subscribers = [MessageSubscriber.from_message(ParcelShipped, [count_parcel])]
    # Leaders and the consumer on the first node; the publisher on the second.
    declaring = RabbitMqConnector(on_vhost(url_of([first, second, third]), vhost))
    consuming = RabbitMqConnector(on_vhost(url_of([first, second, third]), vhost))
    publishing = RabbitMqConnector(on_vhost(url_of([second, third, first]), vhost))
    killed: list[float] = []
    resumed: list[float] = []
    try:
        configurer = RabbitMqMessageConfigurer(declaring, "logistics", "depot", options=OPTIONS)
        configurer.configure_subscribers(subscribers)
        assert queue_leader(cluster, vhost, QUEUE) == first.nodename
        consumer = RabbitMqMessageConsumer(consuming, "logistics", "depot", 3, prefetch=20,
                                           options=OPTIONS)
        consumer.add_subscribers(subscribers)
        consumer.start()
        bus = RabbitMqDomainEventBus(publishing, "logistics", "depot")
        try:
            assert connected_port(consumer) == first.port
            for round_ in range(ROUNDS):
                if round_ == ROUNDS // 3:
                    first.kill()
                    killed.append(time.monotonic())
                if killed:  # one event: the blocking publisher, first used now
                    publish_confirmed(bus, tally, 1)
                    if not resumed:
                        resumed.append(time.monotonic())
                publish_confirmed(bus, tally, BATCH)  # a batch: the event loop's channel
            dead_url = on_vhost(url_of([second]), vhost)

            def settled() -> bool:
                nonlocal dead
                try:
                    dead = asyncio.run(bodies(dead_url, f"dead_letter.{QUEUE}"))
                except aiormq.exceptions.AMQPError:
                    # Its leader was on the killed node: "nodedown" until a new one is elected.
                    return False
                return not unsettled(tally, dead)

            dead: list[bytes] = []
            assert poll(settled, 60), (
                f"{len(set(tally.confirmed) - set(tally.handled))} confirmed events neither "
                "handled nor dead; queues: " + second.ctl(
                    "list_queues", "-p", vhost, "-q", "name", "messages_ready",
                    "messages_unacknowledged", "consumers", "leader"))
        finally:
            consumer.stop()
        with tally.lock:
            confirmed, handled = set(tally.confirmed), Counter(tally.handled)
        dead_ids = {i for i in confirmed - set(handled) if any(i.encode() in b for b in dead)}
        counts = {"confirmed": len(confirmed), "handled": len(handled),
                  "dead_lettered": len(dead_ids),
                  "duplicates": sum(n - 1 for n in handled.values()),
                  "lost": len(confirmed - set(handled) - dead_ids)}
        pause = resumed[0] - killed[0]
        REPORTED.append("queue leader's node killed under its consumer: " + ", ".join(
            f"{k} {v}" for k, v in counts.items()) + f"; publishing resumed {pause:.1f} s after "
            f"the kill ({tally.failed_publishes} publish calls refused or cut and made again)")
        print(REPORTED[-1])
        assert counts["confirmed"] == ROUNDS * BATCH + ROUNDS - ROUNDS // 3
        assert counts["lost"] == 0
        assert pause < 30, "publishes refused long after a new leader was elected"
        assert queue_leader(cluster, vhost, QUEUE) != first.nodename
        first.start()
        wait_until(lambda: len(cluster.running_nodes(via=second)) == 3, timeout=30,
                   what="the killed node to rejoin")
        configurer.clear_subscribers(subscribers)
    finally:
        for connector in (publishing, consuming, declaring):
            connector.close()
