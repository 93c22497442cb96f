"""A broker in a memory alarm blocks publishers: every publish path gives up in time, naming it.

On a throwaway node whose memory watermark is set so low that the alarm goes off: a single sync
publish (the blocking path), a list (the event loop's pipelined path) and an async publish each
raise ``PublishTimeoutError`` within their ``publish_timeout``, saying the broker blocked the
connection and why; once the alarm clears, the same connector publishes again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from eventyard import DomainEvent, PublishTimeoutError, Uuid
from eventyard.rabbitmq import (
    AsyncRabbitMqDomainEventBus,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
)
from eventyard.topology import TopologyOptions
from support.broker import Inspector
from support.rabbitnode import ThrowawayNode
from support.waiting import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.fault]

LIMIT = 1.0


class UserCreated(DomainEvent):
    user_id: Uuid


def _memory_alarm(node: ThrowawayNode) -> bool:
    return "memory" in node.eval("rabbit_alarm:get_alarms()")


def _set_watermark(node: ThrowawayNode, fraction: str) -> bool:
    """Set the node's memory watermark; whether its memory alarm is on right after."""
    return "memory" in node.eval(f"ok = vm_memory_monitor:set_vm_memory_high_watermark("
                                 f"{fraction}), rabbit_alarm:get_alarms()")


def _times_out_naming_the_alarm(publish: Callable[[], None]) -> None:
    started = time.monotonic()
    with pytest.raises(PublishTimeoutError) as raised:
        publish()
    elapsed = time.monotonic() - started
    assert LIMIT - 0.1 <= elapsed < LIMIT + 3, f"gave up after {elapsed:.1f}s, not {LIMIT}s"
    message = str(raised.value)
    assert f"not confirmed within {LIMIT:g}s" in message
    assert "blocked publishing" in message and "memory alarm: 'low on memory'" in message
    assert "may or may not be stored" in message


def test_every_publish_path_gives_up_in_time_during_an_alarm(throwaway_node: ThrowawayNode,
                                                             org: str) -> None:
    url = f"{throwaway_node.url}?publish_timeout={LIMIT:g}"
    options = TopologyOptions(store_queue=f"store.{org}")
    warm = RabbitMqConnector(url)
    cold = None
    try:
        RabbitMqMessageConfigurer(warm, org, "alarm", options=options).configure()
        bus = RabbitMqDomainEventBus(warm, org, "alarm")
        bus.publish(UserCreated(user_id=Uuid.v4()))  # both paths connected before the alarm
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(2)])

        if not _set_watermark(throwaway_node, "0.000001"):
            wait_until(lambda: _memory_alarm(throwaway_node), 30, "the memory alarm")

        _times_out_naming_the_alarm(lambda: bus.publish(UserCreated(user_id=Uuid.v4())))
        _times_out_naming_the_alarm(
            lambda: bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(50)]))

        # Connections opened during the alarm are blocked from their first publish.
        cold = RabbitMqConnector(url)
        cold_bus = RabbitMqDomainEventBus(cold, org, "alarm")
        _times_out_naming_the_alarm(lambda: cold_bus.publish(UserCreated(user_id=Uuid.v4())))

        async def publish_async() -> None:
            try:
                await AsyncRabbitMqDomainEventBus(cold, org, "alarm").publish(
                    UserCreated(user_id=Uuid.v4()))
            finally:
                await cold.aclose()

        _times_out_naming_the_alarm(lambda: asyncio.run(publish_async()))

        if _set_watermark(throwaway_node, "0.4"):
            wait_until(lambda: not _memory_alarm(throwaway_node), 30, "the alarm to clear")
        started = time.monotonic()
        bus.publish(UserCreated(user_id=Uuid.v4()))
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(2)])
        cold_bus.publish(UserCreated(user_id=Uuid.v4()))
        assert time.monotonic() - started < LIMIT
    finally:
        warm.close()
        if cold is not None:
            cold.close()
    # 3 before, 4 after; of the 53 given up on, some may have been stored once unblocked.
    stored = Inspector(throwaway_node.url).count(options.store_queue)
    assert 7 <= stored <= 7 + 53
