"""Several services of one organisation, and a second organisation, on one vhost (DESIGN §4).

acme's ``registration``, ``billing`` and ``notifications`` each configure themselves with default
options; billing and notifications subscribe to the messages of other services (``publisher=``).
On RabbitMQ the fleet gets a vhost of its own, so the store keeps its default name ``store``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from eventyard import (
    DomainEvent,
    MessageConfigurer,
    MessageConsumer,
    MessageSubscriber,
    TopologyMismatchError,
    TopologyOptions,
    Uuid,
)
from eventyard.buses import DomainEventBus
from eventyard.messages import Message

from .conftest import BROKER_PARAMS, MemoryUnderTest, Yard
from .samples import UserCreated


class InvoiceIssued(DomainEvent):
    """Billing charged a new user."""

    user_id: Uuid


class ShopOpened(DomainEvent):
    """globex's own event."""

    shop_id: Uuid


@pytest.fixture(params=BROKER_PARAMS)
def yard(request: pytest.FixtureRequest) -> Iterator[Yard]:
    """A world whose broker is all the fleet's: on RabbitMQ, a vhost of the test's own."""
    if request.param == "memory":
        world = Yard(MemoryUnderTest())
        try:
            yield world
        finally:
            world.teardown()
        return
    from contract.rabbit import RabbitUnderTest
    from support.vhost import own_vhost

    with own_vhost(request.getfixturevalue("rabbit")) as broker:
        world = Yard(RabbitUnderTest(broker))
        try:
            yield world
        finally:
            world.teardown()


class Runs:
    """Handler runs per (handler, message id), from any thread."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, handler: str, message: Message) -> None:
        with self._lock:
            self.counts[(handler, message.get_message_id())] += 1

    def of(self, handler: str) -> Counter[str]:
        with self._lock:
            return Counter({mid: n for (name, mid), n in self.counts.items() if name == handler})


def test_three_services_one_store_cross_service_subscribers(yard: Yard) -> None:
    backend, runs = yard.backend, Runs()
    failed_once: set[str] = set()
    billing_bus = DomainEventBus(backend, "acme", "billing")

    def send_mail(event: UserCreated) -> None:
        runs.add("send_mail", event)

    def event_store(message: Message) -> None:
        runs.add("event_store", message)

    def charge(event: UserCreated) -> bool:
        runs.add("charge", event)
        if event.get_message_id() not in failed_once:  # every charge fails once, then works
            failed_once.add(event.get_message_id())
            return False
        billing_bus.publish(InvoiceIssued(user_id=event.user_id))
        return True

    def welcome(event: UserCreated) -> None:
        runs.add("welcome", event)

    def mail_invoice(event: InvoiceIssued) -> None:
        runs.add("mail_invoice", event)

    fleet = {
        "registration": [MessageSubscriber.from_message(UserCreated, [send_mail]),
                         MessageSubscriber.all_messages([event_store])],
        "billing": [MessageSubscriber.from_message(UserCreated, [charge], publisher="registration")],
        "notifications": [
            MessageSubscriber.from_message(UserCreated, [welcome], publisher="registration"),
            MessageSubscriber.from_message(InvoiceIssued, [mail_invoice], publisher="billing")],
    }
    # Default options everywhere (but a short retry delay), configured in any order: the store
    # is the organisation's.
    options = TopologyOptions(retry_ttl_ms=yard.retry_ttl_ms)
    for service in ("billing", "notifications", "registration"):
        configurer = MessageConfigurer(backend, "acme", service, options=options)
        configurer.configure_subscribers(fleet[service])
        yard._configured.append((configurer, fleet[service]))
    for service, subscribers in fleet.items():
        consumer = MessageConsumer(backend, "acme", service, 3, observers=[yard.recorder],
                                   options=options)
        consumer.add_subscribers(subscribers)
        yard._consumers.append(consumer)
        consumer.start()

    users = [UserCreated(user_id=Uuid.v4()) for _ in range(20)]
    DomainEventBus(backend, "acme", "registration").publish(users)
    ids = {u.get_message_id() for u in users}
    yard.wait_until(lambda: len(runs.of("mail_invoice")) == 20, timeout=30, what="20 invoices mailed")
    yard.wait_until(lambda: len(runs.of("event_store")) == 40, what="40 events stored")
    yard.settle(30)

    assert runs.of("send_mail") == Counter(dict.fromkeys(ids, 1))  # a failing charge never reruns it
    assert runs.of("welcome") == Counter(dict.fromkeys(ids, 1))
    assert runs.of("charge") == Counter(dict.fromkeys(ids, 2))  # failed once, retried alone
    assert set(runs.of("mail_invoice").values()) == {1}
    stored = runs.of("event_store")
    assert ids <= set(stored) and len(stored) == 40 and set(stored.values()) == {1}
    charge_queue = "acme.registration.1.event.user_created.charge"
    assert yard.queue_counts(charge_queue, f"dead_letter.{charge_queue}", "store",
                             "dead_letter.store") == dict.fromkeys(
        (charge_queue, f"dead_letter.{charge_queue}", "store", "dead_letter.store"), 0)
    kinds = Counter(e.kind for e in yard.recorder.events())
    assert kinds["retried"] == 20 and kinds["dead_lettered"] == 0 and kinds["poison"] == 0

    # A second organisation on the vhost: its store needs a name of its own, and says so.
    shop = [MessageSubscriber.all_messages([event_store])]
    with pytest.raises(TopologyMismatchError, match="store_queue="):
        MessageConfigurer(backend, "globex", "shop", options=options).configure_subscribers(shop)
    globex = MessageConfigurer(backend, "globex", "shop", options=TopologyOptions(
        retry_ttl_ms=yard.retry_ttl_ms, store_queue="store_globex"))
    globex.configure_subscribers(shop)
    yard._configured.append((globex, shop))
    DomainEventBus(backend, "globex", "shop").publish(ShopOpened(shop_id=Uuid.v4()))
    yard.wait_until(lambda: yard.queue_counts("store_globex")["store_globex"] == 1)
    assert yard.queue_counts("store")["store"] == 0  # acme's store never sees globex's events
