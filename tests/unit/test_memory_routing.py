"""The in-memory broker's AMQP emulation: topic routing, declare, TTL and dead-lettering."""

from __future__ import annotations

import datetime

import pytest

from eventyard import ConfigurationError, TopologyMismatchError
from eventyard.memory import MemoryBroker, VirtualClock, topic_matches
from eventyard.ports import OutgoingMessage
from eventyard.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("a.b.c", "a.b.c", True), ("a.b.c", "a.b", False), ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.b.c", False), ("*.*.*.event.*", "acme.reg.1.event.user_created", True),
    ("*.*.*.event.*", "acme.reg.1.command.persist_user", False),
    ("*.*.*.event.*", "retry.acme.reg.1.event.user_created.h", False),
    ("#", "", True), ("#", "a.b", True), ("a.#", "a", True), ("a.#", "a.b.c", True),
    ("#.c", "a.b.c", True), ("a.#.c", "a.c", True), ("a.#.c", "a.x.y.c", True),
    ("a.#.c", "a.x.y.d", False), ("*", "a.b", False), ("#.*", "", False),
])
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def spec(queues: dict[str, dict[str, object]], bindings: list[tuple[str, str, str]],
         exchanges: tuple[str, ...] = ("x", "dlx")) -> Topology:
    return Topology(tuple(ExchangeSpec(e) for e in exchanges),
                    tuple(QueueSpec(q, args) for q, args in queues.items()),
                    tuple(BindingSpec(e, q, k) for e, q, k in bindings))


def message(key: str, exchange: str = "x", body: bytes = b"{}", **headers: object) -> OutgoingMessage:
    return OutgoingMessage(exchange, key, body, dict(headers), message_id="m1", type="t")


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(clock=VirtualClock(autojump=False))


async def test_publish_routes_and_reports_unroutable(broker: MemoryBroker) -> None:
    transport = broker.transport()
    await transport.declare(spec({"q1": {}, "q2": {}}, [("x", "q1", "a.*"), ("x", "q2", "a.#"),
                                                        ("x", "q2", "a.b")]))
    assert await transport.publish([message("a.b"), message("z"), message("a.b.c")]) == [1]
    assert broker.message_counts() == {"q1": 1, "q2": 2}  # q2 bound twice: still one copy
    [peeked] = broker.messages("q1")
    assert (peeked.exchange, peeked.routing_key, peeked.message_id, peeked.redelivered) == (
        "x", "a.b", "m1", False)


async def test_publish_to_a_missing_exchange_is_refused(broker: MemoryBroker) -> None:
    with pytest.raises(ConfigurationError, match="exchange 'nope' not found; run the configurer"):
        await broker.transport().publish([message("k", exchange="nope")])


async def test_declare_is_idempotent_and_reports_mismatches(broker: MemoryBroker) -> None:
    transport = broker.transport()
    topology = spec({"q": {"x-message-ttl": 5000}}, [("x", "q", "k")])
    await transport.declare(topology)
    await transport.declare(topology)
    assert broker.bindings() == [("x", "k", "q")]
    with pytest.raises(TopologyMismatchError) as caught:
        await transport.declare(spec({"q": {"x-message-ttl": 200}}, []))
    text = str(caught.value)
    assert "queue 'q' exists with other arguments" in text
    assert "x-message-ttl: exists with 5000, declared with 200" in text
    assert "delete the queue" in text
    with pytest.raises(TopologyMismatchError, match="exchange 'x' exists as topic"):
        await transport.declare(Topology((ExchangeSpec("x", type="fanout"),), (), ()))
    with pytest.raises(ConfigurationError, match="'missing' does not exist"):
        await transport.declare(spec({}, [("x", "missing", "k")]))


async def test_ttl_expiry_dead_letters_with_the_configured_key(broker: MemoryBroker) -> None:
    assert isinstance(broker.clock, VirtualClock)
    transport = broker.transport()
    await transport.declare(spec(
        {"retry.q": {"x-message-ttl": 5000, "x-dead-letter-exchange": "x",
                     "x-dead-letter-routing-key": "retry.q"},
         "q": {}, "other": {}},
        [("dlx", "retry.q", "retry.q"), ("x", "q", "retry.q"), ("x", "other", "k")]))
    await transport.publish([message("retry.q", exchange="dlx", redelivery_count=1)])
    broker.clock.advance(4.999)
    assert broker.message_counts() == {"other": 0, "q": 0, "retry.q": 1}
    assert not broker.is_idle()  # a TTL is pending
    broker.clock.advance(0.001)
    assert broker.message_counts() == {"other": 0, "q": 1, "retry.q": 0}  # only to q
    [back] = broker.messages("q")
    assert (back.exchange, back.routing_key, back.redelivery_count) == ("x", "retry.q", 1)
    [death] = back.headers["x-death"]
    assert (death["queue"], death["reason"], death["count"]) == ("retry.q", "expired", 1)
    assert back.headers["x-first-death-reason"] == "expired"


async def test_reject_without_requeue_dead_letters_and_without_dlx_drops(broker: MemoryBroker) -> None:
    transport = broker.transport()
    await transport.declare(spec(
        {"q": {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead.q"},
         "dead.q": {}, "plain": {}},
        [("x", "q", "k"), ("dlx", "dead.q", "dead.q"), ("x", "plain", "p")]))
    await transport.publish([message("k"), message("p")])
    got = []

    async def reject(delivery: object) -> None:
        got.append(delivery)
        await delivery.reject(requeue=False)  # type: ignore[attr-defined]

    await transport.consume("q", reject, prefetch=1)
    await transport.consume("plain", reject, prefetch=1)
    await broker.wait_until_idle_async(5)
    assert broker.message_counts() == {"dead.q": 1, "plain": 0, "q": 0}
    assert broker.messages("dead.q")[0].headers["x-death"][0]["reason"] == "rejected"
    assert len(got) == 2
    await transport.close()


async def test_delete_removes_queues_messages_and_bindings(broker: MemoryBroker) -> None:
    transport = broker.transport()
    topology = spec({"q": {}}, [("x", "q", "k")])
    await transport.declare(topology)
    await transport.publish([message("k")])
    await transport.delete(Topology((), topology.queues, ()))
    assert broker.queue_names() == [] and broker.bindings() == []
    assert broker.exchange_names() == ["dlx", "x"]
    await transport.delete(topology)
    assert broker.exchange_names() == []


async def test_quorum_delivery_limit_dead_letters_a_crash_loop(broker: MemoryBroker) -> None:
    transport = broker.transport()
    await transport.declare(spec(
        {"q": {"x-delivery-limit": 2, "x-dead-letter-exchange": "dlx",
               "x-dead-letter-routing-key": "dead"}, "dead": {}},
        [("x", "q", "k"), ("dlx", "dead", "dead")]))
    await transport.publish([message("k")])
    runs = []

    async def requeue(delivery: object) -> None:
        runs.append(delivery)
        await delivery.reject(requeue=True)  # type: ignore[attr-defined]

    await transport.consume("q", requeue, prefetch=1)
    await broker.wait_until_idle_async(5)
    assert len(runs) == 3
    assert broker.messages("dead")[0].headers["x-death"][0]["reason"] == "delivery_limit"
    await transport.close()


async def test_autojump_skips_retry_waits_but_not_a_main_queue_ttl() -> None:
    clock = VirtualClock(autojump=True)
    broker = MemoryBroker(clock=clock)
    transport = broker.transport()
    await transport.declare(spec(
        {"q": {"x-message-ttl": 30_000, "x-dead-letter-exchange": "dlx",
               "x-dead-letter-routing-key": "dead"},
         "retry.r": {"x-message-ttl": 5000, "x-dead-letter-exchange": "x",
                     "x-dead-letter-routing-key": "back"},
         "back": {}, "dead": {}},
        [("x", "q", "main"), ("dlx", "retry.r", "retry.r"), ("x", "back", "back"),
         ("dlx", "dead", "dead")]))
    await transport.publish([message("main"), message("retry.r", exchange="dlx")])
    await broker.wait_until_idle_async(5)
    # The retry wait was skipped; the main queue's message did not age by it.
    assert broker.message_counts() == {"back": 1, "dead": 0, "q": 1, "retry.r": 0}
    assert (clock.now(), clock.aged()) == (5.0, 0.0)
    clock.advance(29.9)
    assert broker.message_count("q") == 1
    clock.advance(0.1)  # a test that asks for time to pass ages every queue
    assert broker.message_counts() == {"back": 1, "dead": 1, "q": 0, "retry.r": 0}
    [death] = broker.messages("dead")[0].headers["x-death"]
    assert death["reason"] == "expired" and death["queue"] == "q"
    assert isinstance(death["time"], datetime.datetime) and death["time"].tzinfo is datetime.UTC
    broker.close()


async def test_a_clash_keeps_what_was_declared_before_it(broker: MemoryBroker) -> None:
    transport = broker.transport()
    await transport.declare(spec({"old": {}}, []))
    with pytest.raises(TopologyMismatchError, match="'old' exists with other arguments"):
        await transport.declare(spec({"new": {}, "old": {"x-message-ttl": 5}, "later": {}},
                                     [("x", "new", "k")]))
    assert broker.queue_names() == ["new", "old"]  # declared one by one, as on RabbitMQ
    assert broker.bindings() == []


@pytest.mark.parametrize(("queue", "why"), [
    ("café", "cannot be declared"), ("q" * 256, "bytes long"), ("line\nbreak", "control character"),
])
async def test_names_the_amqp_client_refuses_are_refused_before_anything_is_declared(
        broker: MemoryBroker, queue: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why):
        await broker.transport().declare(spec({"fine": {}, queue: {}}, []))
    assert broker.queue_names() == [] and broker.exchange_names() == []
