"""The in-memory broker's deliveries: order, prefetch, competing consumers, cancel, close, drop."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventyard import BrokerConnectionError, BrokerError, ConfigurationError
from eventyard.memory import MemoryBroker, MemoryDelivery, MemoryTransport, RealClock, VirtualClock
from eventyard.ports import Delivery, OutgoingMessage
from eventyard.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology

TOPOLOGY = Topology((ExchangeSpec("x"),), (QueueSpec("q"),), (BindingSpec("x", "q", "k"),))


def bodies(count: int) -> list[OutgoingMessage]:
    return [OutgoingMessage("x", "k", str(i).encode()) for i in range(count)]


class Holder:
    """A callback that keeps its deliveries until told to ack them."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.arrived.set()

    def seen(self) -> list[bytes]:
        return [d.body for d in self.deliveries]


@pytest.fixture
async def setup() -> tuple[MemoryBroker, MemoryTransport]:
    broker = MemoryBroker(clock=VirtualClock())
    transport = broker.transport()
    await transport.declare(TOPOLOGY)
    return broker, transport


async def test_in_order_with_at_most_prefetch_unacked(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(5))
    holder = Holder()
    await transport.consume("q", holder, prefetch=2)
    await asyncio.wait_for(holder.arrived.wait(), 5)
    assert broker.unacked_count() == 2 and broker.message_count("q") == 3
    while len(holder.deliveries) < 5:
        holder.arrived.clear()
        for delivery in [d for d in holder.deliveries if isinstance(d, MemoryDelivery)
                         and d.state == "pending"]:
            await delivery.ack()
        await asyncio.wait_for(holder.arrived.wait(), 5)
    assert holder.seen() == [b"0", b"1", b"2", b"3", b"4"]
    await holder.deliveries[-1].ack()
    await broker.wait_until_idle_async(5)
    await transport.close()


async def test_one_delivery_at_a_time_per_consumption(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(3))
    running, seen = 0, []

    async def callback(delivery: Delivery) -> None:
        nonlocal running
        running += 1
        assert running == 1
        seen.append(delivery.body)
        await asyncio.sleep(0)  # give the broker a chance to call us again (it must not)
        running -= 1
        await delivery.ack()

    await transport.consume("q", callback, prefetch=3)
    await broker.wait_until_idle_async(5)
    assert seen == [b"0", b"1", b"2"]
    await transport.close()


async def test_requeue_goes_back_to_the_head_redelivered(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(2))
    seen: list[tuple[bytes, bool]] = []
    first: list[Delivery] = []

    async def callback(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.redelivered))
        if len(seen) == 1:
            first.append(delivery)
            await delivery.reject(requeue=True)
        else:
            await delivery.ack()

    await transport.consume("q", callback, prefetch=1)
    await broker.wait_until_idle_async(5)
    assert seen == [(b"0", False), (b"0", True), (b"1", False)]
    with pytest.raises(BrokerError, match="already acked or rejected"):
        await first[0].ack()
    await transport.close()


async def test_competing_consumers_share_round_robin(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    first, second = [], []

    def acker(into: list[bytes]) -> object:
        async def callback(delivery: Delivery) -> None:
            into.append(delivery.body)
            await delivery.ack()
        return callback

    await transport.consume("q", acker(first), prefetch=5)  # type: ignore[arg-type]
    await broker.transport().consume("q", acker(second), prefetch=5)  # type: ignore[arg-type]
    await transport.publish(bodies(6))
    await broker.wait_until_idle_async(5)
    assert sorted(first + second) == [str(i).encode() for i in range(6)]
    assert len(first) == len(second) == 3


async def test_cancel_returns_buffered_deliveries(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(4))
    holder, gate = Holder(), asyncio.Event()

    async def blocking(delivery: Delivery) -> None:
        await holder(delivery)
        await gate.wait()

    consumption = await transport.consume("q", blocking, prefetch=3)
    await asyncio.wait_for(holder.arrived.wait(), 5)
    await consumption.cancel()
    # The one in hand may still be acked; the two buffered ones are back in their places,
    # redelivered (RabbitMQ delivered them), before the one never taken.
    assert [m.body for m in broker.messages("q")] == [b"1", b"2", b"3"]
    assert [m.redelivered for m in broker.messages("q")] == [True, True, False]
    gate.set()
    await holder.deliveries[0].ack()
    assert holder.seen() == [b"0"]
    await broker.wait_until_idle_async(5)


async def test_close_returns_unacked_redelivered_and_a_late_ack_changes_nothing(
        setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(2))
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    await asyncio.wait_for(holder.arrived.wait(), 5)
    await transport.close()
    assert [(m.body, m.redelivered) for m in broker.messages("q")] == [(b"0", True), (b"1", False)]
    await holder.deliveries[0].ack()  # as on RabbitMQ: a no-op, the message stays queued
    assert [(m.body, m.redelivered) for m in broker.messages("q")] == [(b"0", True), (b"1", False)]
    with pytest.raises(BrokerConnectionError, match="closed"):
        await transport.publish(bodies(1))


async def test_drop_requeues_and_resumes(setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(1))
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    await asyncio.wait_for(holder.arrived.wait(), 5)
    holder.arrived.clear()
    await transport.drop()
    await holder.deliveries[0].ack()  # lost with its connection: a no-op, as on RabbitMQ
    await asyncio.wait_for(holder.arrived.wait(), 5)  # redelivered to the resumed consumption
    assert [(d.body, d.redelivered) for d in holder.deliveries] == [(b"0", False), (b"0", True)]
    await holder.deliveries[1].ack()
    await broker.wait_until_idle_async(5)
    await transport.close()


async def test_consuming_a_missing_queue_says_run_the_configurer() -> None:
    transport = MemoryBroker(clock=VirtualClock()).transport()
    with pytest.raises(ConfigurationError, match="queue 'nope' not found; run the configurer"):
        await transport.consume("nope", Holder(), prefetch=1)


async def test_wait_until_idle_times_out_saying_what_is_busy(
        setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(1))
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    with pytest.raises(TimeoutError, match="1 unacked"):
        await broker.wait_until_idle_async(0.05)
    await holder.deliveries[0].ack()
    await broker.wait_until_idle_async(5)
    await transport.close()


async def test_autojump_crosses_a_long_ttl_instantly() -> None:
    clock = VirtualClock()
    broker = MemoryBroker(clock=clock)
    transport = broker.transport()
    await transport.declare(Topology(
        (ExchangeSpec("x"), ExchangeSpec("retry")),
        (QueueSpec("q"), QueueSpec("retry.q", {"x-message-ttl": 3_600_000, "x-dead-letter-exchange": "x",
                                               "x-dead-letter-routing-key": "k"})),
        (BindingSpec("x", "q", "k"), BindingSpec("retry", "retry.q", "retry.q"))))
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    started = time.monotonic()
    await transport.publish([OutgoingMessage("retry", "retry.q", b"late")])
    await asyncio.wait_for(holder.arrived.wait(), 5)
    assert time.monotonic() - started < 1.0
    assert clock.now() == pytest.approx(3600.0)
    await holder.deliveries[0].ack()
    await transport.close()


def test_real_clock_waits_for_real() -> None:
    broker = MemoryBroker()
    assert isinstance(broker.clock, RealClock)
    topology = Topology((ExchangeSpec("x"),),
                        (QueueSpec("retry.q", {"x-message-ttl": 50}), QueueSpec("dead")),
                        (BindingSpec("x", "retry.q", "k"),))
    transport = broker.transport()

    async def run() -> None:
        await transport.declare(topology)
        await transport.publish([OutgoingMessage("x", "k", b"1")])

    started = time.monotonic()
    broker.loop_thread.run(run())
    assert broker.message_count("retry.q") == 1
    broker.wait_until_idle(5)
    assert time.monotonic() - started >= 0.04
    assert broker.message_counts() == {"dead": 0, "retry.q": 0}  # no DLX: dropped
    broker.close()


async def test_messages_handed_back_one_by_one_keep_their_places(
        setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish(bodies(6))
    holder = Holder()
    consumption = await transport.consume("q", holder, prefetch=6)
    while len(holder.deliveries) < 6:
        holder.arrived.clear()
        await asyncio.wait_for(holder.arrived.wait(), 5)
    await consumption.cancel()
    by_body = {d.body: d for d in holder.deliveries}
    for body in (b"4", b"2", b"3", b"1"):  # as RabbitMQ does: each back to where it was
        await by_body[body].reject(requeue=True)
    await by_body[b"0"].ack()
    await by_body[b"5"].ack()
    assert [(m.body, m.redelivered) for m in broker.messages("q")] == [
        (b"1", True), (b"2", True), (b"3", True), (b"4", True)]
    await transport.publish(bodies(1))
    assert [m.body for m in broker.messages("q")] == [b"1", b"2", b"3", b"4", b"0"]


async def test_a_consumer_of_a_deleted_queue_consumes_it_again_once_it_is_declared(
        setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    await transport.delete(TOPOLOGY)
    assert broker.queue_names() == [] and broker.is_idle()
    await transport.declare(TOPOLOGY)
    await transport.publish(bodies(1))
    await asyncio.wait_for(holder.arrived.wait(), 5)
    assert holder.seen() == [b"0"]
    await holder.deliveries[0].ack()
    await transport.close()


async def test_quorum_deliveries_tell_how_often_they_were_handed_back() -> None:
    broker = MemoryBroker(clock=VirtualClock())
    transport = broker.transport()
    await transport.declare(Topology((ExchangeSpec("x"),), (QueueSpec("q", {"x-queue-type": "quorum"}),),
                                     (BindingSpec("x", "q", "k"),)))
    await transport.publish(bodies(1))
    assert broker.messages("q")[0].headers == {"x-delivery-count": 0}  # as basic.get shows it
    counts: list[object] = []

    async def callback(delivery: Delivery) -> None:
        counts.append(delivery.headers.get("x-delivery-count"))
        if len(counts) < 3:
            await delivery.reject(requeue=True)
        else:
            await delivery.ack()

    await transport.consume("q", callback, prefetch=1)
    await broker.wait_until_idle_async(5)
    assert counts == [0, 1, 2]
    await transport.close()


async def test_a_message_is_published_as_the_amqp_client_sends_it(
        setup: tuple[MemoryBroker, MemoryTransport]) -> None:
    broker, transport = setup
    await transport.publish([OutgoingMessage("x", "k", b"1", {"f": 0.1, "b": bytearray(b"\xff")})])
    [queued] = broker.messages("q")
    assert queued.headers == {"f": 0.10000000149011612, "b": bytearray(b"\xff")}  # 32-bit float
    assert queued.message_id is not None and len(queued.message_id) == 32  # the client's id
    with pytest.raises(TypeError, match="Unknown type"):
        await transport.publish([OutgoingMessage("x", "k", b"2"),
                                 OutgoingMessage("x", "k", b"3", {"bad": b"bytes"})])
    with pytest.raises(UnicodeEncodeError):
        await transport.publish([OutgoingMessage("x", "k", b"4", {"name": "\udcff"})])
    assert broker.message_count("q") == 1  # nothing of a refused list was sent


async def test_a_header_over_the_frame_closes_the_connection_as_rabbitmq_does() -> None:
    broker = MemoryBroker(clock=VirtualClock(), frame_max=4096)
    transport = broker.transport()
    assert transport.frame_max == 4096
    await transport.declare(TOPOLOGY)
    await transport.publish(bodies(1))
    holder = Holder()
    await transport.consume("q", holder, prefetch=1)
    await asyncio.wait_for(holder.arrived.wait(), 5)
    holder.arrived.clear()
    fits = OutgoingMessage("x", "k", b"fits", {"h": "x" * 3900})
    too_big = OutgoingMessage("x", "k", b"big", {"h": "x" * 4100})
    with pytest.raises(BrokerConnectionError, match="frame"):
        await transport.publish([fits, too_big])
    # The connection went down: the delivery in hand comes back and consuming resumes; the
    # message before the big one was published, the big one was not.
    await asyncio.wait_for(holder.arrived.wait(), 5)
    assert [(d.body, d.redelivered) for d in holder.deliveries] == [(b"0", False), (b"0", True)]
    assert [m.body for m in broker.messages("q")] == [b"fits"]
    await holder.deliveries[1].ack()
    await transport.close()
