"""The chaos soak on the three-node cluster with quorum queues, and a node killed during it.

``run_soak_async`` publishes events to several subscribers with simulated nacks and handler
failures (retries through quorum retry queues, dead letters when retries run out) and a dropped
consumer connection; meanwhile the node its consumer is connected to is killed with ``kill -9``
and started again. The queues' leaders and the publisher are on another node (the leader-loss
case is ``docs/cluster.md``'s open question). Every published message must end up handled or
dead-lettered: lost = 0; duplicates are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from cluster.test_node_loss import REPORTED, on_vhost, url_of
from eventyard.engine import LoopThread
from eventyard.ports import Transport
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.rabbitmq.soak import RabbitMqSoakProbe
from eventyard.rabbitmq.transport import RabbitMqTransport
from eventyard.soak import SoakReport, run_soak_async
from support.cluster import Cluster

pytestmark = pytest.mark.cluster

EVENTS = 600
SUBSCRIBERS = 3


class SplitBackend:
    """Publishing (and declaring, so queue leaders land there) through one connector, consuming
    through another: each names the cluster's nodes in its own order."""

    def __init__(self, publishing: RabbitMqConnector, consuming: RabbitMqConnector) -> None:
        self.publishing, self.consuming = publishing, consuming
        self.consumer_transports: list[RabbitMqTransport] = []

    @property
    def loop_thread(self) -> LoopThread:
        return self.publishing.loop_thread

    async def publisher_transport(self) -> Transport:
        return await self.publishing.publisher_transport()

    async def consumer_transport(self) -> Transport:
        transport = await self.consuming.consumer_transport()
        assert isinstance(transport, RabbitMqTransport)
        self.consumer_transports.append(transport)
        return transport


def test_chaos_soak_with_the_consumers_node_killed_and_brought_back(cluster: Cluster,
                                                                     vhost: str) -> None:
    first, second, third = cluster.nodes
    # Leaders and the publisher on the third node; the consumer on the first, which is killed.
    publishing = RabbitMqConnector(on_vhost(url_of([third, second, first]), vhost))
    consuming = RabbitMqConnector(on_vhost(url_of([first, second, third]), vhost))
    backend = SplitBackend(publishing, consuming)
    probe = RabbitMqSoakProbe(publishing.settings)
    killed_at: list[int] = []
    back: list[float] = []

    async def kill_the_consumers_node(activity: Callable[[], int]) -> None:
        deadline = time.monotonic() + 60
        while activity() < EVENTS // 2:  # about a quarter of the work done
            assert time.monotonic() < deadline, "the soak's consumer did not get going"
            await asyncio.sleep(0.05)  # polling a counter with a deadline
        killed_at.append(activity())
        await asyncio.to_thread(first.kill)
        started = time.monotonic()
        await asyncio.to_thread(first.start)  # brought back while the soak goes on
        back.append(time.monotonic() - started)

    async def soak() -> SoakReport:
        await probe.connect()
        try:
            return await run_soak_async(
                backend, events=EVENTS, subscribers=SUBSCRIBERS,
                nack=0.2, failure=0.2, drops=1, seed=14, max_retries=2, retry_ttl_ms=100,
                timeout=90, queue_type="quorum", probe=probe,
                disruption=kill_the_consumers_node)
        finally:
            await publishing.aclose()
            await consuming.aclose()

    started = time.monotonic()
    try:
        report = asyncio.run(soak())
    finally:
        publishing.close()
        consuming.close()
    seconds = time.monotonic() - started

    subs = report.subscribers
    counts = {"published": sum(s.published for s in subs), "handled": sum(s.handled for s in subs),
              "retried": sum(s.retried for s in subs),
              "dead_lettered": sum(s.dead_lettered for s in subs),
              "duplicates": sum(s.duplicates for s in subs), "lost": report.lost,
              "pending": sum(s.pending for s in subs)}
    came_back = f"{back[0]:.1f} s" if back else "never"
    REPORTED.append(
        f"chaos soak, consumer's node killed at activity {killed_at} and back after {came_back} "
        f"({seconds:.0f} s): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(REPORTED[-1])
    assert killed_at and back, "the node was not killed and brought back during the soak"
    assert report.quiet, "the soak did not go quiet"
    assert counts["lost"] == 0 and counts["pending"] == 0
    assert counts["retried"] > 0 and counts["dead_lettered"] > 0
    assert report.ok
    # The consumer reconnected after the dropped connection and after losing its node.
    assert sum(t.reconnections for t in backend.consumer_transports) >= 2
    assert len(cluster.running_nodes(via=second)) == 3
