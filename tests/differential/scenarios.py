"""The scenarios: application code written once, run on both brokers by the differential test.

Each takes a ``World`` and returns what it observed; the test compares the two observations.
A scenario waits on what its consumers report (never on time), then stops them so that nothing
changes while it reads the queues.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
from collections.abc import Callable
from typing import Any

from differential.foreign import long_string, table
from differential.world import World
from eventyard import Command, DomainEvent, InfoId, MessageSubscriber, codec, naming
from eventyard.consuming import ConsumerSettings
from eventyard.ports import UNREADABLE_PROPERTIES
from eventyard.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology

SCENARIOS: list[Callable[[World], Any]] = []


def scenario(function: Callable[[World], Any]) -> Callable[[World], Any]:
    """Register ``function`` as a scenario of the suite."""
    SCENARIOS.append(function)
    return function


# -- the application's messages and handlers -----------------------------------------------------
class ItemPlaced(DomainEvent):
    """An event with a number, to see the order of runs."""

    n: int


class ItemShipped(DomainEvent):
    """Published by a handler of ItemPlaced."""

    n: int


class ShipItem(Command):
    """A command with one handler."""

    n: int


class NobodyShips(Command):
    """A command nobody handles."""

    n: int = 0


class Log:
    """What handlers did, in order (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def named(name: str, function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``function`` under ``name`` (which names its queue)."""
    function.__name__ = function.__qualname__ = name
    return function


def recording(log: Log, name: str = "record") -> Callable[[Any], Any]:
    """A handler that logs (name, n) and succeeds."""
    return named(name, lambda message: log.add((name, getattr(message, "n", None))))


def failing(log: Log, name: str = "flaky", times: int | None = None,
            error: Callable[[int], Exception] = lambda run: RuntimeError(f"run {run} failed"),
            ) -> Callable[[Any], Any]:
    """A handler that logs its runs and raises on the first ``times`` (every one if None)."""
    runs = Log()

    def handler(message: Any) -> None:
        runs.add(None)
        log.add((name, getattr(message, "n", None)))
        if times is None or len(runs) <= times:
            raise error(len(runs))

    return named(name, handler)


def queue_of(w: World, message: type, handler: str, service: str | None = None) -> str:
    """The queue ``Q`` of ``handler`` subscribed to ``message``."""
    return naming.queue(w.organization, service or w.service, message.message_version,
                        message.message_kind, message.message_name, handler)


def key_of(w: World, message: type) -> str:
    """The routing key ``message`` is published with."""
    return naming.routing_key(w.organization, w.service, message.message_version,
                              message.message_kind, message.message_name)


def queues(w: World, q: str) -> dict[str, Any]:
    """Ready counts of ``Q``, ``retry.Q`` and ``dead_letter.Q``."""
    return {name: w.count(name) for name in (q, naming.retry_queue(q), naming.dead_letter_queue(q))}


# -- delivery ------------------------------------------------------------------------------------
@scenario
def handled_in_order(w: World) -> Any:
    """Ten events published at once run in order on one queue (concurrency 1)."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)])]
    w.configure(subscribers)
    w.consumer(subscribers)
    w.event_bus().publish([ItemPlaced(n=n) for n in range(10)])
    w.wait_for_events("handled", 10)
    w.stop_consumers()
    return {"runs": log.items(), "events": w.events(),
            "queues": queues(w, queue_of(w, ItemPlaced, "record"))}


@scenario
def retried_then_handled(w: World) -> Any:
    """A handler failing twice runs three times; each retry goes through ``retry.Q``."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log, times=2)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=3)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("handled", 1)
    w.stop_consumers()
    return {"runs": log.items(), "events": w.events(),
            "queues": queues(w, queue_of(w, ItemPlaced, "flaky"))}


@scenario
def dead_lettered_with_its_headers(w: World) -> Any:
    """Out of retries: the dead letter's failure headers and RabbitMQ's ``x-death``, typed."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=2)
    w.event_bus().publish(ItemPlaced(n=7).add_info_id(InfoId(correlation_id="c-7", user_id="u")))
    w.wait_for_events("dead_lettered", 1)
    w.stop_consumers()
    q = queue_of(w, ItemPlaced, "flaky")
    return {"runs": log.items(), "events": w.events(),
            "dead": w.take(naming.dead_letter_queue(q)), "queues": queues(w, q)}


@scenario
def no_retries(w: World) -> Any:
    """``max_retries=0``: straight to the dead-letter queue, never through ``retry.Q``."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=0)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("dead_lettered", 1)
    w.stop_consumers()
    return {"runs": log.items(), "dead": w.take(naming.dead_letter_queue(
        queue_of(w, ItemPlaced, "flaky")))}


@scenario
def invalid_handler_result(w: World) -> Any:
    """A handler returning a string fails with ``InvalidHandlerResult``; async handlers alike."""
    async def returns_text(message: Any) -> Any:
        return "done, I think"

    subscribers = [MessageSubscriber.from_message(ItemPlaced, [
        named("returns_text", returns_text), named("returns_number", lambda message: 1)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=0)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("dead_lettered", 2)
    w.stop_consumers()
    return {name: w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, name)))
            for name in ("returns_text", "returns_number")}


@scenario
def poison_body(w: World) -> Any:
    """A body that is not a message: dead-lettered at once, with the reason, id kept."""
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(Log())])]
    w.configure(subscribers)
    w.consumer(subscribers)
    w.publish_raw(key_of(w, ItemPlaced), b"not json", message_id="poison-1",
                  headers={"origin": "elsewhere"})
    w.publish_raw(key_of(w, ItemPlaced), b'{"data": {"type": "item.placed"}}')
    w.wait_for_events("poison", 2)
    w.stop_consumers()
    return {"events": w.events(),
            "dead": w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, "record")))}


PATTERNS = ("#", "*", "a.*", "*.b", "a.#", "#.b", "a.#.b", "*.*", "a.*.#", "#.#", "a.b.c",
            "", "#.a.#", "*.#.*", "a.*.*.b")
KEYS = ("", "a", "b", "a.b", "a.c", "c.b", "a.b.c", "a.x.b", "a.x.y.b", "b.a", "a..b", ".a",
        "a.", "x.a.y", "a.b.b", "*", "a.#")


@scenario
def topic_patterns(w: World) -> Any:
    """Which binding patterns take which routing keys (15 patterns x 17 keys)."""
    exchange = f"{w.organization}.topics"
    names = [f"{w.organization}.pattern{i}" for i in range(len(PATTERNS))]
    w.declare_raw(Topology((ExchangeSpec(exchange),), tuple(QueueSpec(q) for q in names),
                           tuple(BindingSpec(exchange, q, p) for q, p in zip(names, PATTERNS,
                                                                              strict=True))))
    unroutable = w.publish_raw_to(exchange, KEYS)
    taken = {pattern: [m["routing_key"] for m in w.take(q) or []]
             for q, pattern in zip(names, PATTERNS, strict=True)}
    return {"unroutable": [KEYS[i] for i in unroutable], "taken": taken}


@scenario
def store_sees_everything(w: World) -> Any:
    """The store's handler gets every event and command; the recorder counts it by name."""
    log = Log()
    store = recording(log, "keep_everything")
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log, "on_placed")]),
                   MessageSubscriber.from_message(ShipItem, [recording(log, "ship")]),
                   MessageSubscriber.all_messages([store])]
    w.configure(subscribers)
    w.consumer(subscribers)
    w.event_bus().publish(ItemPlaced(n=1))
    w.command_bus().dispatch(ShipItem(n=2))
    w.wait_for_events("handled", 4)
    w.stop_consumers()
    return {"runs": sorted(log.items()),
            "store handled": len(w.recorder.handled(handler=store)),
            "ship handled": len(w.recorder.handled(ShipItem, handler="ship")),
            "published": sorted(type(m).__name__ for m in w.recorder.published())}


@scenario
def unroutable_messages(w: World) -> Any:
    """A command nobody handles raises; an event nobody handles does not; a service nobody
    configured has no exchange."""
    w.configure([])
    return {"command": w.attempt(lambda: w.command_bus().dispatch(NobodyShips())),
            "command list": w.attempt(lambda: w.command_bus().dispatch([NobodyShips()] * 2)),
            "event": w.attempt(lambda: w.event_bus().publish(ItemPlaced(n=1))),
            "unknown service": w.attempt(lambda: w.event_bus("ghost").publish(ItemPlaced(n=1)))}


@scenario
def publish_from_a_handler(w: World) -> Any:
    """A handler publishes an event that another subscriber handles."""
    log = Log()
    bus = w.event_bus()

    def ship(message: ItemPlaced) -> None:
        log.add(("ship", message.n))
        bus.publish(ItemShipped(n=message.n + 100))

    subscribers = [MessageSubscriber.from_message(ItemPlaced, [named("ship", ship)]),
                   MessageSubscriber.from_message(ItemShipped, [recording(log, "shipped")])]
    w.configure(subscribers)
    w.consumer(subscribers)
    bus.publish(ItemPlaced(n=1))
    w.wait_for_events("handled", 2)
    w.stop_consumers()
    return {"runs": log.items()}


@scenario
def meta_and_tracing_headers(w: World) -> Any:
    """Meta and the info id travel in the body; tracing ids in the headers."""
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(Log())])]
    w.configure(subscribers)
    w.event_bus().publish(ItemPlaced(n=3).with_meta({"source": "test", "nested": {"a": [1, 2]}})
                          .add_info_id(InfoId(correlation_id="corr", client_id="cl", ip="::1")))
    return w.take(queue_of(w, ItemPlaced, "record"))


@scenario
def competing_consumers(w: World) -> Any:
    """Two consumers of one service share a queue: every event runs once."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)])]
    w.configure(subscribers)
    w.consumer(subscribers, prefetch=2)
    w.consumer(subscribers, prefetch=2)
    w.event_bus().publish([ItemPlaced(n=n) for n in range(20)])
    w.wait_for_events("handled", 20)
    w.stop_consumers()
    return {"runs": sorted(log.items())}


@scenario
def concurrent_async_handlers(w: World) -> Any:
    """Concurrency 4 with an async handler: every event runs once."""
    log = Log()

    async def handle(message: ItemPlaced) -> None:
        log.add(message.n)

    subscribers = [MessageSubscriber.from_message(ItemPlaced, [named("handle", handle)])]
    w.configure(subscribers)
    w.consumer(subscribers, concurrency=4)
    w.event_bus().publish([ItemPlaced(n=n) for n in range(12)])
    w.wait_for_events("handled", 12)
    w.stop_consumers()
    return {"runs": sorted(log.items())}


@scenario
def another_services_event(w: World) -> Any:
    """Billing reacts to registration's event through registration's queues."""
    log = Log()
    charge = MessageSubscriber.from_message(ItemPlaced, [recording(log, "charge")],
                                            publisher="registration")
    w.configure([], service="registration")
    w.configure([charge], service="billing")
    w.consumer([charge], service="billing")
    w.event_bus("registration").publish(ItemPlaced(n=5))
    w.wait_for_events("handled", 1)
    w.stop_consumers()
    return {"runs": log.items(), "events": w.events()}


@scenario
def consumer_declares_what_is_missing(w: World) -> Any:
    """The seed's consumer snippet: nobody configured, the consumer declares its queues; with
    ``declare_missing=False`` it says the queue is missing instead."""
    log = Log()
    strict = MessageSubscriber.from_message(ShipItem, [recording(log, "ship")])
    refused = w.consumer([strict], start=False,
                         settings=ConsumerSettings(declare_missing=False,
                                                   store_queue=f"store_{w.organization}"))
    outcome = w.attempt(refused.start)
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)])]
    w.consumer(subscribers)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("handled", 1)
    w.stop_consumers()
    return {"strict": outcome, "runs": log.items(),
            "queues": queues(w, queue_of(w, ItemPlaced, "record"))}


# -- the clock -------------------------------------------------------------------------------------
@scenario
def main_queue_ttl_is_not_skipped(w: World) -> Any:
    """A main queue's TTL (petisco's 5 s, here 30 s) does not pass while nobody consumes: an
    event published before the consumer starts is handled, not dead-lettered."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log, times=1)])]
    w.configure(subscribers, main_queue_ttl_ms=30_000)
    consumer = w.consumer(subscribers, max_retries=2, start=False,
                          options={"main_queue_ttl_ms": 30_000})
    w.event_bus().publish([ItemPlaced(n=1), ItemPlaced(n=2)])
    consumer.start()
    w.wait_for_events("handled", 2)
    w.stop_consumers()
    return {"runs": log.items(), "queues": queues(w, queue_of(w, ItemPlaced, "flaky"))}


# -- requeue and queues coming back ----------------------------------------------------------------
@scenario
def requeued_messages_keep_their_place(w: World) -> Any:
    """A graceful stop hands back the messages it took and did not start, one by one; they go
    back to their places, and a new consumer sees every message in publishing order."""
    log = Log()
    started, gate = threading.Event(), threading.Event()

    def slow(message: ItemPlaced) -> None:
        log.add(message.n)
        if message.n == 0:
            started.set()
            gate.wait(10)

    subscribers = [MessageSubscriber.from_message(ItemPlaced, [named("slow", slow)])]
    w.configure(subscribers)
    first = w.consumer(subscribers, prefetch=10)
    w.event_bus().publish(ItemPlaced(n=0))
    w.wait(started.is_set, "the first message to start")
    # Nine more are taken (prefetch 10) and wait behind the first, which holds its batch.
    w.event_bus().publish([ItemPlaced(n=n) for n in range(1, 30)])
    q = queue_of(w, ItemPlaced, "slow")
    w.wait(lambda: w.count(q) == 20, "nine messages taken behind the first")
    stopping = threading.Thread(target=first.stop)
    stopping.start()
    w.wait(lambda: not first.is_running, "the consumer to stop taking messages")
    gate.set()
    stopping.join(10)
    w.consumer(subscribers, prefetch=10)
    w.wait(lambda: len(log) >= 30, "30 runs")
    w.stop_consumers()
    return {"runs": log.items()}


@scenario
def messages_handed_back_are_redelivered(w: World) -> Any:
    """A stop hands back what the consumer took and did not start (an async handler holds
    the queue's order): they come back marked redelivered, the ones never taken not."""
    started, gate = threading.Event(), threading.Event()

    async def slow(message: ItemPlaced) -> None:
        if message.n == 0:
            started.set()
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)

    subscribers = [MessageSubscriber.from_message(ItemPlaced, [named("slow", slow)])]
    w.configure(subscribers)
    consumer = w.consumer(subscribers, prefetch=4)
    w.event_bus().publish([ItemPlaced(n=n) for n in range(6)])
    q = queue_of(w, ItemPlaced, "slow")
    w.wait(lambda: started.is_set() and w.count(q) == 2, "four messages taken, the first started")
    stopping = threading.Thread(target=consumer.stop)
    stopping.start()
    w.wait(lambda: w.count(q) == 5, "the three taken and not started to be handed back")
    gate.set()
    stopping.join(10)
    return [(m["body"]["attributes"]["n"], m["redelivered"]) for m in w.take(q) or []]


@scenario
def queue_deleted_and_declared_again(w: World) -> Any:
    """A running consumer whose queue is deleted consumes it again once it is declared again."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)])]
    configurer = w.configure(subscribers)
    w.consumer(subscribers)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("handled", 1)
    configurer.clear_subscribers(subscribers)
    configurer.configure_subscribers(subscribers)
    w.event_bus().publish(ItemPlaced(n=2))
    w.wait_for_events("handled", 2)
    w.stop_consumers()
    return {"runs": log.items()}


@scenario
def declare_clash_keeps_what_came_first(w: World) -> Any:
    """A queue declared with another retry TTL is a clash; what was declared before it stays."""
    before = MessageSubscriber.from_message(ItemPlaced, [recording(Log(), "first")])
    w.configure([before])
    later = MessageSubscriber.from_message(ShipItem, [recording(Log(), "later")])
    outcome = w.attempt(lambda: w.configure([later, before], retry_ttl_ms=80))
    later_q = queue_of(w, ShipItem, "later")
    return {"outcome": outcome, "later queues": queues(w, later_q),
            "dispatch": w.attempt(lambda: w.command_bus().dispatch(ShipItem(n=1)))}


# -- names -------------------------------------------------------------------------------------------
class Wildcard(DomainEvent):
    """A message name RabbitMQ would read as a pattern."""

    message_name = "*"


class Café(DomainEvent):
    """A class name that is not ASCII."""


class OrderPlaced(DomainEvent):
    """Collides with Order_Placed once dots become underscores."""


class Order_Placed(DomainEvent):
    """Collides with OrderPlaced."""


def _names_attempts(w: World, event: DomainEvent, handler: Callable[[Any], Any]) -> dict[str, Any]:
    subscribers = [MessageSubscriber.from_message(type(event), [handler])]
    return {"configure": w.attempt(lambda: w.configure(subscribers)),
            "consume": w.attempt(lambda: w.consumer(subscribers)),
            "publish": w.attempt(lambda: w.event_bus().publish(event)),
            "exchange declared": w.exchange_exists(naming.exchange(w.organization, w.service))}


@scenario
def message_name_that_is_a_pattern(w: World) -> Any:
    """``message_name = "*"`` is refused before anything is declared."""
    return _names_attempts(w, Wildcard(), recording(Log()))


@scenario
def message_class_that_is_not_ascii(w: World) -> Any:
    """``class Café`` is refused before anything is declared."""
    return _names_attempts(w, Café(), recording(Log()))


@scenario
def queue_name_too_long(w: World) -> Any:
    """A handler name that makes a queue name over 255 bytes is refused, nothing declared."""
    return _names_attempts(w, ItemPlaced(n=1), recording(Log(), "h" * 220))


@scenario
def organisation_with_a_newline(w: World) -> Any:
    """An organisation ``"acme\\n"`` is refused by every class."""
    return {"configurer": w.attempt(lambda: w.configurer(organization="acme\n").configure()),
            "bus": w.attempt(lambda: w.event_bus(organization="acme\n"))}


@scenario
def a_topology_built_by_hand_with_a_bad_name(w: World) -> Any:
    """The transport itself refuses a queue name the client cannot send, declaring nothing."""
    exchange = f"{w.organization}.by_hand"
    bad = Topology((ExchangeSpec(exchange),), (QueueSpec(f"{w.organization}.café"),), ())
    return {"declare": w.attempt(lambda: w.declare_raw(bad)),
            "exchange declared": w.exchange_exists(exchange)}


@scenario
def names_that_collide(w: World) -> Any:
    """OrderPlaced and Order_Placed would share a routing key: refused, naming both."""
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [recording(Log(), "a")]),
                   MessageSubscriber.from_message(Order_Placed, [recording(Log(), "b")])]
    return {"configure": w.attempt(lambda: w.configure(subscribers)),
            "consume": w.attempt(lambda: w.consumer(subscribers)),
            "exchange declared": w.exchange_exists(naming.exchange(w.organization, w.service))}


# -- headers -----------------------------------------------------------------------------------------
@scenario
def header_types_on_the_wire(w: World) -> Any:
    """What the AMQP client makes of each header type, and which it refuses (nothing sent)."""
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(Log())])]
    w.configure(subscribers)
    key = key_of(w, ItemPlaced)
    w.publish_raw(key, b"{}", headers={
        "float": 0.1, "decimal": decimal.Decimal("1.50"), "big": 70_000, "bool": True,
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, 678_000), "none": None,
        "bytes": bytearray(b"\x00\xff"), "list": [1, "a", [2.5]], "table": {"k": {"j": -5}},
        "k" * 140: "a long name is cut"})
    refused = {name: w.attempt(lambda value=value: w.publish_raw(key, b"{}", headers={"h": value}))
               for name, value in (("set", {1}), ("tuple", (1, 2)), ("bytes", b"raw"),
                                   ("huge int", 2**64), ("lone surrogate", "a\udcffb"),
                                   ("nan decimal", decimal.Decimal("NaN")))}
    return {"kept": w.take(queue_of(w, ItemPlaced, "record")), "refused": refused}


@scenario
def a_batch_with_a_header_the_client_refuses(w: World) -> Any:
    """A list whose second message has a header the client cannot write: nothing of it is sent,
    and the publishes after it go on as before."""
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(Log())])]
    w.configure(subscribers)
    key = key_of(w, ItemPlaced)
    refused = w.attempt(lambda: w.publish_raw_list(key, [{"ok": 1}, {"bad": {1}}, {"ok": 2}]))
    then = w.attempt(lambda: w.publish_raw_list(key, [{"ok": 3}]))
    return {"refused": refused, "then": then,
            "queued": [m["headers"] for m in w.take(queue_of(w, ItemPlaced, "record")) or []]}


@scenario
def handler_error_with_a_lone_surrogate(w: World) -> Any:
    """A handler's error text that is not UTF-8 (a file name): retried and dead-lettered."""
    log = Log()
    bad = failing(log, error=lambda run: FileNotFoundError(f"no file '\udcff{run}.txt'"))
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [bad])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=1)
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("dead_lettered", 1)
    w.stop_consumers()
    return {"runs": log.items(), "events": w.events(),
            "dead": w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, "flaky")))}


@scenario
def info_id_with_a_lone_surrogate(w: World) -> Any:
    """An info id that is not UTF-8 (it travels in the body and in the tracing headers): what
    publishing it does."""
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(Log())])]
    w.configure(subscribers)
    event = ItemPlaced(n=1).add_info_id(InfoId(correlation_id="a\udcffb"))
    return {"publish": w.attempt(lambda: w.event_bus().publish(event)),
            "publish list": w.attempt(lambda: w.event_bus().publish([event])),
            "then": w.attempt(lambda: w.event_bus().publish(ItemPlaced(n=2))),
            "queued": w.count(queue_of(w, ItemPlaced, "record"))}


@scenario
def headers_that_outgrow_a_frame(w: World) -> Any:
    """Headers past the frame size: the connection is closed under the publish; the next
    publish works (a new connection)."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)])]
    w.configure(subscribers)
    w.consumer(subscribers)
    big = ItemPlaced(n=1).add_info_id(InfoId(correlation_id="x" * 140_000))
    outcome = {"one": w.attempt(lambda: w.event_bus().publish(big)),
               "list": w.attempt(lambda: w.event_bus().publish([big]))}
    w.event_bus().publish(ItemPlaced(n=2))
    w.wait_for_events("handled", 1)
    w.stop_consumers()
    return {"outcome": outcome, "runs": log.items()}


@scenario
def a_failing_message_with_headers_near_the_frame_size(w: World) -> Any:
    """Headers that leave no room for the failure headers: the copy keeps a summary of them,
    fits the frame, and is dead-lettered at once; the consumer goes on."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=3)
    w.publish_raw(key_of(w, ItemPlaced), codec.encode(ItemPlaced(n=1)),
                  headers={"big": "x" * 129_600, "small": "kept"}, message_id="big-1")
    w.wait_for_events("dead_lettered", 1)
    w.stop_consumers()
    dead = w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, "flaky"))) or []
    for message in dead:  # too long to show; its size and kind say enough
        stack = message["headers"].get("failure_stack", "")
        message["headers"]["failure_stack"] = (len(stack), stack.splitlines()[-1:])
        big = message["headers"].get("big")
        message["headers"]["big"] = len(big) if big is not None else None
    return {"runs": log.items(), "events": w.events(), "dead": dead}


def _foreign(w: World, headers: bytes) -> Any:
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log)])]
    w.configure(subscribers)
    w.consumer(subscribers, max_retries=1)
    w.publish_foreign(key_of(w, ItemPlaced), codec.encode(ItemPlaced(n=4)), headers,
                      message_id="foreign-1")
    w.wait(lambda: len(w.recorder.events("dead_lettered")) + len(w.recorder.events("poison")) >= 1,
           "a dead letter")
    w.stop_consumers()
    dead = w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, "flaky")))
    for message in dead or []:  # the client's own words for what it could not read
        if UNREADABLE_PROPERTIES in message["headers"]:
            message["headers"][UNREADABLE_PROPERTIES] = "(why)"
    return {"runs": log.items(), "events": w.events(), "dead": dead}


@scenario
def header_value_not_utf8_from_another_client(w: World) -> Any:
    """A header string that is not UTF-8 (another language's client): read as bytes, retried,
    dead-lettered with it."""
    return _foreign(w, table((b"trace", long_string(b"\xff\xfe-1")), (b"n", b"b\x05")))


@scenario
def header_name_not_utf8_from_another_client(w: World) -> Any:
    """A header name that is not UTF-8: the properties cannot be read, the message is
    dead-lettered with its body."""
    return _foreign(w, table((b"\xffname", long_string(b"v"))))


# -- queue types and presets ---------------------------------------------------------------------------
@scenario
def quorum_queues(w: World) -> Any:
    """Quorum queues: the delivery count RabbitMQ adds, retries and the dead letter."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [failing(log)])]
    w.configure(subscribers, queue_type="quorum")
    w.consumer(subscribers, max_retries=1, options={"queue_type": "quorum"})
    w.event_bus().publish(ItemPlaced(n=1))
    w.wait_for_events("dead_lettered", 1)
    w.stop_consumers()
    return {"runs": log.items(),
            "dead": w.take(naming.dead_letter_queue(queue_of(w, ItemPlaced, "flaky")))}


@scenario
def petisco_preset_with_default_names(w: World) -> Any:
    """The petisco preset with default names (the store is ``store``): an event published
    before the consumer starts is handled by its subscriber and by the store."""
    log = Log()
    subscribers = [MessageSubscriber.from_message(ItemPlaced, [recording(log)]),
                   MessageSubscriber.all_messages([recording(log, "store")])]
    preset = {"main_queue_ttl_ms": 5000, "layout": "petisco", "store_queue": "store"}
    w.configure(subscribers, **preset)
    consumer = w.consumer(subscribers, start=False, options=preset)
    w.event_bus().publish(ItemPlaced(n=1))
    consumer.start()
    w.wait_for_events("handled", 2)
    w.stop_consumers()
    return {"runs": sorted(log.items()), "store": w.count("store"),
            "unroutable command": w.attempt(lambda: w.command_bus().dispatch(NobodyShips()))}


petisco_preset_with_default_names.own_vhost = True  # type: ignore[attr-defined]
