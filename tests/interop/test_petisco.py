"""eventyard with ``TopologyOptions.petisco()`` beside petisco 2.2.3 itself, on one broker.

petisco's own configurer, event bus and consumer run here (installed with the ``interop``
extra). Each test has an organisation and a service name of its own on the vhost ``/`` (the
only one petisco connects to) and deletes what it declared; see conftest.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import aiormq
import petisco
import pytest

from eventyard import Command, DomainEvent, InfoId, MessageSubscriber, TopologyOptions, Uuid
from interop.conftest import Interop
from interop.sides import (
    Events,
    PetiscoService,
    Runs,
    Snapshot,
    YardService,
    petisco_subscriber,
    snapshot,
    yard_handler,
)
from support.broker import Inspector, RabbitBroker
from support.vhost import own_vhost
from support.waiting import wait_until

pytestmark = [pytest.mark.rabbitmq,
              # petisco 2.2.3's consumer logger calls pydantic's deprecated .dict()
              pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")]

RETRY_TTL_MS = 200
MAX_RETRIES = 2
# The preset, with the retry TTL of petisco's QueueConfig in these tests; no store (see conftest).
PRESET = TopologyOptions.petisco(retry_ttl_ms=RETRY_TTL_MS, store=False)


class UserCreated(petisco.DomainEvent):
    """petisco's event: petisco names it after the class, ``user.created``."""

    user_id: str
    name: str


class PersistUser(petisco.Command):
    """petisco's command ``persist.user``."""

    user_id: str


class YardUserCreated(DomainEvent):
    """The same event in eventyard."""

    message_name = "user.created"
    user_id: Uuid
    name: str


class YardPersistUser(Command):
    """The same command in eventyard."""

    message_name = "persist.user"
    user_id: Uuid


def always(_: Any) -> bool:
    return True


def petisco_event(name: str) -> UserCreated:
    return UserCreated(user_id=str(uuid4()), name=name)


def yard_event(name: str) -> YardUserCreated:
    return YardUserCreated(user_id=Uuid.v4(), name=name)


def pid(message: Any) -> str:
    """The message id of a petisco or an eventyard message."""
    found = message.get_message_id()
    return found if isinstance(found, str) else str(found.value)


def letters(interop: Interop, queue: str) -> list[tuple[str, dict[str, Any], str]]:
    """(message id, headers, routing key) of the messages taken out of ``queue``."""
    return [(json.loads(body)["data"]["id"], headers, key)
            for body, headers, key in interop.inspector.take(queue)]


def death_queues(headers: dict[str, Any]) -> set[str]:
    """The queues the broker dead-lettered a message from (its ``x-death`` header)."""
    return {str(death["queue"]) for death in headers.get("x-death") or []}


def test_petisco_publishes_and_eventyard_consumes(interop: Interop) -> None:
    runs, events = Runs(), Events()
    subscribers = [MessageSubscriber.from_message(YardUserCreated, [yard_handler("send_mail", runs)])]
    yard = interop.yard(PRESET)
    yard.configure(subscribers)
    yard.consume(subscribers, MAX_RETRIES, events)

    sent = [petisco_event(f"user {i}") for i in range(3)]
    interop.petisco.publish(sent)

    ids = {pid(e) for e in sent}
    # An observer hears of a message once it is acked (after its handler ran).
    wait_until(lambda: len(events.items) == 3, 10, "eventyard to handle petisco's events")
    assert runs.of("send_mail") == Counter(dict.fromkeys(ids, 1))
    for event in sent:
        received = runs.seen[("send_mail", pid(event))]
        assert type(received) is YardUserCreated
        assert (received.user_id, received.name) == (Uuid(event.user_id), event.name)
        assert received.get_occurred_on() == event.get_message_occurred_on().replace(tzinfo=None)
        assert received.get_meta() == {}
    assert [e.kind for e in events.items] == ["handled"] * 3


def test_eventyard_publishes_and_petisco_consumes(interop: Interop) -> None:
    runs = Runs()
    mail = petisco_subscriber("send_mail", UserCreated, runs)
    persist = petisco_subscriber("persist_user_handler", PersistUser, runs)
    interop.petisco.configure([mail, persist], retry_ttl_ms=RETRY_TTL_MS)
    consumer = interop.petisco.consume([mail, persist], MAX_RETRIES)
    yard = interop.yard(PRESET)

    plain = yard_event("plain")
    traced = yard_event("traced").add_info_id(InfoId(correlation_id="c-1", user_id="u-1"))
    command = YardPersistUser(user_id=Uuid.v4())
    yard.publish([plain, traced])
    yard.dispatch(command)

    wait_until(lambda: len(runs.of("send_mail")) == 2 and len(runs.of("persist_user_handler")) == 1,
               10, "petisco to handle eventyard's messages")
    interop.petisco.stop(consumer)
    # Stopped, its connection closed: a message handled but not acked would be back, to run again.
    for queue in (interop.queue("send_mail"), interop.queue("persist_user_handler", "command",
                                                            "persist_user")):
        assert interop.inspector.count(queue) == interop.inspector.count(f"retry.{queue}") == 0
    assert runs.of("send_mail") == Counter({pid(plain): 1, pid(traced): 1})
    assert runs.of("persist_user_handler") == Counter({pid(command): 1})
    received = runs.seen[("send_mail", pid(plain))]
    assert (received.get_message_name(), received.get_message_type()) == ("user.created",
                                                                         "domain_event")
    assert received.get_message_attributes() == {"user_id": str(plain.user_id), "name": "plain"}
    assert received.get_message_occurred_on().replace(tzinfo=None) == plain.get_occurred_on()
    assert runs.seen[("send_mail", pid(traced))].get_message_meta() == {
        "info_id": {"correlation_id": "c-1", "user_id": "u-1"}}
    ordered = runs.seen[("persist_user_handler", pid(command))]
    assert (ordered.get_message_type(), ordered.user_id) == ("command", str(command.user_id))


@pytest.mark.parametrize("first", ["petisco", "eventyard"])
def test_a_petisco_and_an_eventyard_consumer_share_one_queue(interop: Interop, first: str) -> None:
    """Both declare the queue (either first: no PRECONDITION_FAILED), both consume it: every
    message is handled once, by one of them."""
    runs, events = Runs(), Events()
    on_petisco = petisco_subscriber("send_mail", UserCreated, runs)
    on_yard = [MessageSubscriber.from_message(YardUserCreated, [yard_handler("send_mail", runs)])]
    yard = interop.yard(PRESET)
    configure = {"petisco": lambda: interop.petisco.configure([on_petisco], retry_ttl_ms=RETRY_TTL_MS),
                 "eventyard": lambda: yard.configure(on_yard)}
    for side in sorted(configure, key=lambda s: s != first):
        configure[side]()
    queue = interop.queue("send_mail")
    assert interop.inspector.queues(queue)[queue]["x-message-ttl"] == 5000

    consumer = interop.petisco.consume([on_petisco], MAX_RETRIES)
    yard_consumer = yard.consume(on_yard, MAX_RETRIES, events)
    from_petisco = [petisco_event(f"p{i}") for i in range(20)]
    from_yard = [yard_event(f"y{i}") for i in range(20)]
    interop.petisco.publish(from_petisco)
    yard.publish(from_yard)

    ids = {pid(m) for m in [*from_petisco, *from_yard]}
    wait_until(lambda: set(runs.of("send_mail")) == ids, 20, "both consumers to handle every message")
    interop.petisco.stop(consumer)
    yard.stop(yard_consumer)
    # Both stopped, their connections closed: a message handled but not acked would be back in
    # the queue (or its retry queue), to be handled a second time.
    assert interop.inspector.count(queue) == interop.inspector.count(f"retry.{queue}") == 0
    handled = runs.of("send_mail")
    assert handled == Counter(dict.fromkeys(ids, 1)), "a message lost or handled twice"
    by_petisco, by_yard = runs.of("send_mail", "petisco"), runs.of("send_mail", "eventyard")
    assert by_petisco and by_yard, f"one consumer took all: {len(by_petisco)} / {len(by_yard)}"
    assert not events.of("retried") and not events.of("dead_lettered")
    assert interop.inspector.count(f"dead_letter.{queue}") == 0


def test_a_failing_handler_on_either_side_retries_then_dead_letters(interop: Interop) -> None:
    """petisco's and eventyard's consumers each run a failing handler 1 + max_retries times,
    through its retry queue, then dead-letter the message, whoever published it."""
    runs, events = Runs(), Events()
    on_petisco = petisco_subscriber("fail_on_petisco", UserCreated, runs, fail=always)
    on_yard = [MessageSubscriber.from_message(
        YardUserCreated, [yard_handler("fail_on_eventyard", runs, fail=always)])]
    interop.petisco.configure([on_petisco], retry_ttl_ms=RETRY_TTL_MS)
    yard = interop.yard(PRESET)
    yard.configure(on_yard)
    consumer = interop.petisco.consume([on_petisco], MAX_RETRIES)
    yard.consume(on_yard, MAX_RETRIES, events)

    sent = [petisco_event("from petisco"), yard_event("from eventyard")]
    interop.petisco.publish(sent[:1])
    yard.publish(sent[1:])

    ids = {pid(m) for m in sent}
    runs_each = 1 + MAX_RETRIES
    wait_until(lambda: runs.total("fail_on_petisco") == 2 * runs_each
               and len(events.of("dead_lettered")) == 2, 15, "both sides to dead-letter both")
    assert runs.of("fail_on_petisco") == Counter(dict.fromkeys(ids, runs_each))
    # eventyard's requeue command takes petisco's dead letters back: a full retry budget again.
    petisco_dead = f"dead_letter.{interop.queue('fail_on_petisco')}"
    wait_until(lambda: interop.inspector.count(petisco_dead) == 2, 5, "petisco's dead letters")
    assert "requeued 2 messages" in interop.requeue(petisco_dead)
    wait_until(lambda: runs.total("fail_on_petisco") == 4 * runs_each
               and interop.inspector.count(petisco_dead) == 2, 15, "the requeued letters to die again")
    interop.petisco.stop(consumer)
    assert runs.of("fail_on_petisco") == Counter(dict.fromkeys(ids, 2 * runs_each))
    assert runs.of("fail_on_eventyard") == Counter(dict.fromkeys(ids, runs_each))
    assert len(events.of("retried")) == 2 * MAX_RETRIES

    for handler, count in (("fail_on_petisco", MAX_RETRIES + 1), ("fail_on_eventyard", MAX_RETRIES)):
        queue = interop.queue(handler)
        dead = letters(interop, f"dead_letter.{queue}")
        assert {mid for mid, _, _ in dead} == ids
        for _, headers, key in dead:
            assert key == f"dead_letter.{queue}"
            assert f"retry.{queue}" in death_queues(headers)  # it went through the retry queue
            # petisco counts its dead-lettering publish too; eventyard counts retries only.
            assert headers["redelivery_count"] == count
        assert interop.inspector.count(queue) == interop.inspector.count(f"retry.{queue}") == 0


def test_each_side_picks_up_a_copy_the_other_side_retried(interop: Interop) -> None:
    """A message one side failed comes back through the retry queue to whichever consumer the
    queue has then: here the other side's (during a switch-over), which fails the copy once more
    and retries it itself, then handles it."""
    runs, events = Runs(), Events()

    def first_run(handler: str, side: str) -> Callable[[Any], bool]:
        return lambda message: runs.of(handler, side)[pid(message)] == 1

    # relay_one: eventyard fails first, petisco takes over; relay_two: the other way round.
    yard_fails = [MessageSubscriber.from_message(
        YardUserCreated, [yard_handler("relay_one", runs, fail=always)])]
    petisco_fails = petisco_subscriber("relay_two", UserCreated, runs, fail=always)
    petisco_takes = petisco_subscriber("relay_one", UserCreated, runs,
                                       fail=first_run("relay_one", "petisco"))
    yard_takes = [MessageSubscriber.from_message(YardUserCreated, [
        yard_handler("relay_two", runs, fail=first_run("relay_two", "eventyard"))])]
    interop.petisco.configure([petisco_fails, petisco_takes], retry_ttl_ms=RETRY_TTL_MS)
    yard = interop.yard(PRESET)
    yard.configure([*yard_fails, *yard_takes])
    # Retries enough that nothing runs out of them while consumers are swapped.
    many = 20
    failing_yard = yard.consume(yard_fails, many, events)
    failing_petisco = interop.petisco.consume([petisco_fails], many, name="consumer-fails")

    sent = [petisco_event("p0"), petisco_event("p1"), yard_event("y0"), yard_event("y1")]
    interop.petisco.publish(sent[:2])
    yard.publish(sent[2:])
    ids = {pid(m) for m in sent}
    one, two = interop.queue("relay_one"), interop.queue("relay_two")
    wait_until(lambda: {e.message_id for e in events.of("retried", one)} == ids
               and set(runs.of("relay_two", "petisco")) == ids, 10, "both first failures")

    yard.stop(failing_yard)
    taking_petisco = interop.petisco.consume([petisco_takes], many, name="consumer-takes")
    yard.consume(yard_takes, many, events)
    interop.petisco.stop(failing_petisco)
    wait_until(lambda: runs.of("relay_one", "petisco") == Counter(dict.fromkeys(ids, 2))
               and len(events.of("handled", two)) == len(ids), 15, "the other sides to take over")
    interop.petisco.stop(taking_petisco)

    # petisco retried eventyard's copies (headers, no `queue` header, key retry.Q) correctly.
    assert runs.of("relay_one", "petisco") == Counter(dict.fromkeys(ids, 2))
    assert runs.of("relay_two", "eventyard") == Counter(dict.fromkeys(ids, 2))
    # eventyard read petisco's retry count off each copy it took over, and counted on.
    assert {e.message_id for e in events.of("retried", two)} == ids
    taken = events.of("handled", two)
    assert len(taken) == len(ids) and all(e.redelivery_count >= 2 for e in taken)
    assert not events.of("dead_lettered")
    for queue in (one, two):
        assert interop.inspector.count(f"dead_letter.{queue}") == 0


def test_petisco_loses_the_retry_of_a_message_that_carries_headers(interop: Interop) -> None:
    """A hazard of petisco 2.2.3's consumer (docs/migrating-from-petisco.md).

    When a handler fails and the message has no AMQP headers, petisco sets ``queue`` to the
    queue's name and retries to ``retry.<queue>``. When the message has headers but no ``queue``
    header (eventyard's tracing headers, sent when the message carries an ``InfoId``), petisco
    retries to ``retry.<the message's routing key>``, which no queue binds: the copy is dropped
    and the original acked. An observer queue bound to that key shows where it went. The safe
    path: a message without an ``InfoId`` (no headers) retries and dead-letters as usual, and
    eventyard's consumer retries either kind.
    """
    runs, events = Runs(), Events()
    on_petisco = petisco_subscriber("fail_on_petisco", UserCreated, runs, fail=always)
    on_yard = [MessageSubscriber.from_message(
        YardUserCreated, [yard_handler("fail_on_eventyard", runs, fail=always)])]
    interop.petisco.configure([on_petisco], retry_ttl_ms=RETRY_TTL_MS)
    yard = interop.yard(PRESET)
    yard.configure(on_yard)
    org, svc = interop.organization, interop.service
    lost_key = f"retry.{org}.{svc}.1.event.user_created"
    observer = f"observe.{org}"
    asyncio.run(_bind(interop.url, observer, f"retry.{org}.{svc}", lost_key))
    consumer = interop.petisco.consume([on_petisco], max_retries=1)
    yard.consume(on_yard, 1, events)

    plain = yard_event("plain")
    traced = yard_event("traced").add_info_id(InfoId(correlation_id="c-1"))
    yard.publish([plain, traced])

    wait_until(lambda: runs.of("fail_on_petisco").get(pid(plain)) == 2
               and len(events.of("dead_lettered")) == 2, 10, "the plain message's dead letter")
    interop.petisco.stop(consumer)
    assert runs.of("fail_on_petisco") == Counter({pid(plain): 2, pid(traced): 1})
    queue = interop.queue("fail_on_petisco")
    assert [mid for mid, _, _ in letters(interop, f"dead_letter.{queue}")] == [pid(plain)]
    assert interop.inspector.count(queue) == interop.inspector.count(f"retry.{queue}") == 0
    [(mid, headers, key)] = letters(interop, observer)
    assert (mid, key, headers["correlation_id"], "queue" in headers) == (
        pid(traced), lost_key, "c-1", False)
    bound = {b for b in interop.inspector.bindings(org) if b[2] == lost_key}
    assert bound == {(f"retry.{org}.{svc}", observer, lost_key)}, "only the observer binds it"
    # eventyard's consumer routes retries by its queue's name, headers or not.
    assert runs.of("fail_on_eventyard") == Counter({pid(plain): 2, pid(traced): 2})
    yard_queue = interop.queue("fail_on_eventyard")
    assert {m for m, _, _ in letters(interop, f"dead_letter.{yard_queue}")} == {pid(plain),
                                                                               pid(traced)}


async def _bind(url: str, queue: str, exchange: str, routing_key: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=False)
        await channel.queue_bind(queue, exchange, routing_key=routing_key)
    finally:
        await connection.close()


def _subscribers(runs: Runs) -> tuple[list[type], list[MessageSubscriber]]:
    """The same two subscribers (an event and a command) in petisco and in eventyard."""
    return ([petisco_subscriber("send_mail", UserCreated, runs),
             petisco_subscriber("persist_user_handler", PersistUser, runs)],
            [MessageSubscriber.from_message(YardUserCreated, [yard_handler("send_mail", runs)]),
             MessageSubscriber.from_message(YardPersistUser,
                                            [yard_handler("persist_user_handler", runs)])])


def test_the_preset_declares_what_petisco_declares(interop: Interop) -> None:
    """With defaults on both sides (petisco's QueueConfig: 5 s retry and main TTL), petisco's
    configurer and the preset leave the broker in one state, whichever declares first.

    Held after petisco == held after petisco then eventyard == held after eventyard alone; and
    petisco declaring after eventyard raises nothing (RabbitMQ refuses other queue arguments).
    """
    on_petisco, on_yard = _subscribers(Runs())
    yard = interop.yard(TopologyOptions.petisco(store=False))
    held = _declared_both_ways(interop.inspector, interop.organization,
                               lambda: interop.petisco.configure(on_petisco),
                               lambda: yard.configure(on_yard))
    queues, bindings, exchanges = held
    mail = interop.queue("send_mail")
    assert queues[mail]["x-message-ttl"] == queues[f"retry.{mail}"]["x-message-ttl"] == 5000
    assert len(queues) == 6 and len(bindings) == 8 and len(exchanges) == 3


def test_a_cross_service_subscriber_is_what_petisco_configures_under_the_publisher(
        interop: Interop) -> None:
    """A petisco billing service reacts to registration's event by configuring and consuming
    under registration's name; eventyard's billing names the publisher (``publisher=``) and
    gets the same queues, and consumes what petisco's registration publishes."""
    runs, events = Runs(), Events()
    on_petisco = [petisco_subscriber("charge", UserCreated, runs)]  # under registration's name
    on_yard = [MessageSubscriber.from_message(YardUserCreated, [yard_handler("charge", runs)],
                                              publisher=interop.service)]
    billing = interop.yard(PRESET, service=f"billing{uuid4().hex[:6]}")
    charge = interop.queue("charge")
    _declared_both_ways(interop.inspector, charge,
                        lambda: interop.petisco.configure(on_petisco, retry_ttl_ms=RETRY_TTL_MS),
                        lambda: billing.configure(on_yard))
    billing.consume(on_yard, MAX_RETRIES, events)
    sent = petisco_event("cross")
    interop.petisco.publish([sent])
    wait_until(lambda: bool(events.items), 10, "billing to handle it")
    assert [(e.kind, e.queue, e.message_id) for e in events.items] == [("handled", charge, pid(sent))]
    assert runs.of("charge") == Counter({pid(sent): 1})


def test_the_preset_store_is_petiscos_store(rabbit: RabbitBroker, org: str) -> None:
    """The store with its arguments and bindings, as petisco declares it and as the preset does.

    petisco names its store ``store``, ``retry.store`` and ``dead_letter.store`` for every
    organisation, and their arguments name the organisation: on the shared ``/`` a store another
    test or run left there would make both declarations fail (no fault of either), and deleting
    it afterwards could take it from under its owner. So this test alone runs in a vhost of its
    own, with petisco's connector pointed at it (only its connection's vhost changes), where
    ``store`` is certainly the test's.
    """
    service = f"s{uuid4().hex[:8]}"
    on_petisco, on_yard = _subscribers(Runs())
    with own_vhost(rabbit) as broker:
        vhost = unquote(urlsplit(broker.url).path[1:])
        petisco_side = PetiscoService(broker.url, org, service, vhost=vhost)
        yard = YardService(broker.url, org, service, TopologyOptions.petisco())
        try:
            queues, bindings, _ = _declared_both_ways(
                broker.inspector, "", lambda: petisco_side.configure(on_petisco, store=True),
                lambda: yard.configure(on_yard))
        finally:
            petisco_side.close()
            yard.close()
    assert queues["store"] == {"x-dead-letter-exchange": f"dead_letter.{org}.store",
                               "x-dead-letter-routing-key": "dead_letter.store",
                               "x-message-ttl": 5000, "durable": True}
    assert queues["retry.store"] == {"x-dead-letter-exchange": f"retry.{org}.store",
                                     "x-dead-letter-routing-key": "store",
                                     "x-message-ttl": 5000, "durable": True}
    assert (f"{org}.{service}", "store", "*.*.*.command.*") in bindings


def _declared_both_ways(inspector: Inspector, names: str, by_petisco: Callable[[], None],
                        by_yard: Callable[[], None]) -> Snapshot:
    """What the broker holds after petisco's and eventyard's declarations, in either order
    (asserted equal), for the names that contain ``names``."""
    by_petisco()
    alone = snapshot(inspector, names)
    by_yard()  # raises on any difference in queue arguments
    assert snapshot(inspector, names) == alone, "eventyard declared more than petisco"
    asyncio.run(_delete(inspector.url, alone))
    by_yard()
    assert snapshot(inspector, names) == alone, "eventyard alone declared something else"
    by_petisco()  # raises on any difference in queue arguments
    return alone


async def _delete(url: str, held: Snapshot) -> None:
    """Delete the queues and exchanges of ``held`` (not the broker's own ``amq.*``)."""
    queues, _, exchanges = held
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            if not exchange.startswith("amq."):
                await channel.exchange_delete(exchange)
    finally:
        await connection.close()
