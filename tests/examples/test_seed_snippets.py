"""The seed document's code snippets, as written (``petisco`` renamed), on a real broker.

They run in order in one namespace, as a reader runs them, on a throwaway RabbitMQ node: the
snippets use the organisations ``acme`` and ``alice`` and the shared ``store`` queue, names that
must not touch the shared test broker. The consume snippet is compiled with postponed annotations
because it annotates its handler with ``Event``, a name the seed never defines or imports.
"""

from __future__ import annotations
import __future__

import os
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from eventyard import ConsumerEvent, InfoId
from support.rabbitnode import ThrowawayNode
from support.waiting import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.fault]

CREATE_A_DOMAIN_EVENT = """
from eventyard import DomainEvent, Uuid

class UserCreated(DomainEvent):
    user_id: Uuid

domain_event = UserCreated(user_id=Uuid.v4())
"""

CONFIGURE_RABBITMQ = """
from eventyard import DomainEvent, MessageSubscriber
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer
from meiga import Result, Error, isSuccess, isFailure

def send_mail_handler(domain_event: DomainEvent) -> Result[bool, Error]:
  # Do your stuff here
  return isSuccess # if fails, returns isFailure

# Define Subscribers
domain_event = UserCreated(user_id=Uuid.v4())
subscribers = [MessageSubscriber.from_message(domain_event, [send_mail_handler])]

# Configure RabbitMQ Infrastructure with defined subscribers
connector = RabbitMqConnector()
organization = "acme"
service = "registration"
configurer = RabbitMqMessageConfigurer(connector, organization, service)
configurer.configure_subscribers(subscribers)
"""

START_CONSUMING = """
from eventyard import MessageSubscriber
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer
from meiga import Result, Error, isSuccess, isFailure


def send_mail_handler(event: Event) -> Result[bool, Error]:
  # Do your stuff here
  return isSuccess # if fails, returns isFailure


# Define Subscribers
domain_event = UserCreated(user_id=Uuid.v4())
subscribers = [MessageSubscriber.from_message(domain_event, [send_mail_handler])]

# Define RabbitMQ Consumer and start

organization = "alice"
service = "petisco"
max_retries = 5
connector = RabbitMqConnector()
consumer = RabbitMqMessageConsumer(connector, organization, service, max_retries)
consumer.add_subscribers(subscribers)
consumer.start()
"""

PUBLISH = """
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus

connector = RabbitMqConnector()
organization = "alice"
service = "petisco"
bus = RabbitMqDomainEventBus(connector, organization, service)

domain_event = UserCreated(user_id=Uuid.v4())

bus.publish(domain_event)
"""

TRICKS = """
user_created = UserCreated(user_id, name).add_info_id(info_id)
"""


def run(snippet: str, namespace: dict[str, Any], *, postponed_annotations: bool = False) -> None:
    flags = __future__.annotations.compiler_flag if postponed_annotations else 0
    code = compile(textwrap.dedent(snippet), "<seed snippet>", "exec", flags=flags, dont_inherit=True)
    exec(code, namespace)


@pytest.fixture
def seed_broker(throwaway_node: ThrowawayNode) -> Iterator[ThrowawayNode]:
    """The seed's RabbitMqConnector() reads RABBITMQ_HOST/PORT: point them at the node."""
    saved = {k: os.environ.get(k) for k in ("RABBITMQ_HOST", "RABBITMQ_PORT")}
    os.environ.update(RABBITMQ_HOST="127.0.0.1", RABBITMQ_PORT=str(throwaway_node.port))
    try:
        yield throwaway_node
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_seeds_snippets_run_in_order_and_the_event_is_handled(seed_broker: ThrowawayNode) -> None:
    namespace: dict[str, Any] = {}
    run(CREATE_A_DOMAIN_EVENT, namespace)
    run(CONFIGURE_RABBITMQ, namespace)
    configure_connector = namespace["connector"]
    run(START_CONSUMING, namespace, postponed_annotations=True)
    consumer, consume_connector = namespace["consumer"], namespace["connector"]
    events: list[ConsumerEvent] = []
    consumer.add_observer(events.append)
    try:
        run(PUBLISH, namespace)
        published = namespace["domain_event"]
        wait_until(lambda: [(e.kind, e.message_id) for e in events]
                   == [("handled", published.get_message_id())], what="the seed's event handled")
    finally:
        consumer.stop()
        for connector in (configure_connector, consume_connector, namespace["connector"]):
            connector.close()
    queues = seed_broker.ctl("list_queues", "name", "-q").split()
    assert "acme.registration.1.event.user_created.send_mail_handler" in queues
    assert "alice.petisco.1.event.user_created.send_mail_handler" in queues
    assert "store" in queues


def test_the_tricks_snippet_adds_info_id_to_positional_fields() -> None:
    from eventyard import DomainEvent, Uuid

    class UserCreated(DomainEvent):
        user_id: Uuid
        name: str

    namespace = {"UserCreated": UserCreated, "user_id": Uuid.v4(), "name": "ada",
                 "info_id": InfoId(client_id="acme", correlation_id="c-1")}
    run(TRICKS, namespace)
    event = namespace["user_created"]
    assert event.name == "ada"
    assert event.get_meta()["info_id"] == {"client_id": "acme", "correlation_id": "c-1"}
