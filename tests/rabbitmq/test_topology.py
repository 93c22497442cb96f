"""The configurer declares exactly DESIGN §4 on a real broker, idempotently and safely."""

from __future__ import annotations

import dataclasses

import pytest

from eventyard import Command, DomainEvent, MessageSubscriber, TopologyMismatchError, Uuid
from eventyard.rabbitmq import RabbitMqMessageConfigurer
from rabbitmq.conftest import RabbitApp

pytestmark = pytest.mark.rabbitmq


class UserCreated(DomainEvent):
    user_id: Uuid


class PersistUser(Command):
    user_id: Uuid


def send_mail_handler(event: UserCreated) -> None:
    return None


def persist_user_handler(command: PersistUser) -> None:
    return None


SUBSCRIBERS = [
    MessageSubscriber.from_message(UserCreated, [send_mail_handler]),
    MessageSubscriber.from_message(PersistUser, [persist_user_handler]),
]


def configurer(app: RabbitApp, **changes: object) -> RabbitMqMessageConfigurer:
    return RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                                     options=dataclasses.replace(app.options, **changes))


def test_declares_every_exchange_queue_argument_and_binding(app: RabbitApp) -> None:
    configurer(app).configure_subscribers(SUBSCRIBERS)

    o, s = app.org, f"{app.org}.registration"
    q_event = f"{s}.1.event.user_created.send_mail_handler"
    q_command = f"{s}.1.command.persist_user.persist_user_handler"
    store = app.store_queue
    held = app.broker.inspector
    assert held.exchanges(o) == {
        name: {"type": "topic", "durable": True}
        for name in (s, f"retry.{s}", f"dead_letter.{s}", f"retry.{o}.store", f"dead_letter.{o}.store")
    }
    assert held.queues(o) == {
        q_event: {"x-dead-letter-exchange": f"dead_letter.{s}",
                  "x-dead-letter-routing-key": f"dead_letter.{q_event}", "durable": True},
        f"retry.{q_event}": {"x-message-ttl": 200, "x-dead-letter-exchange": s,
                             "x-dead-letter-routing-key": f"retry.{q_event}", "durable": True},
        f"dead_letter.{q_event}": {"durable": True},
        q_command: {"x-dead-letter-exchange": f"dead_letter.{s}",
                    "x-dead-letter-routing-key": f"dead_letter.{q_command}", "durable": True},
        f"retry.{q_command}": {"x-message-ttl": 200, "x-dead-letter-exchange": s,
                               "x-dead-letter-routing-key": f"retry.{q_command}", "durable": True},
        f"dead_letter.{q_command}": {"durable": True},
        store: {"x-dead-letter-exchange": f"dead_letter.{o}.store",
                "x-dead-letter-routing-key": f"dead_letter.{store}", "durable": True},
        f"retry.{store}": {"x-message-ttl": 200, "x-dead-letter-exchange": f"retry.{o}.store",
                           "x-dead-letter-routing-key": store, "durable": True},
        f"dead_letter.{store}": {"durable": True},
    }
    assert held.bindings(o) == {
        (s, q_event, f"{s}.1.event.user_created"),
        (s, q_event, f"retry.{q_event}"),
        (f"retry.{s}", f"retry.{q_event}", f"retry.{q_event}"),
        (f"dead_letter.{s}", f"dead_letter.{q_event}", f"dead_letter.{q_event}"),
        (s, q_command, f"{s}.1.command.persist_user"),
        (s, q_command, f"retry.{q_command}"),
        (f"retry.{s}", f"retry.{q_command}", f"retry.{q_command}"),
        (f"dead_letter.{s}", f"dead_letter.{q_command}", f"dead_letter.{q_command}"),
        (s, store, "*.*.*.event.*"),
        (s, store, f"{s}.1.command.persist_user"),
        (f"retry.{o}.store", store, store),
        (f"retry.{o}.store", f"retry.{store}", f"retry.{store}"),
        (f"dead_letter.{o}.store", f"dead_letter.{store}", f"dead_letter.{store}"),
    }


def test_declaring_again_changes_nothing_the_broker_holds_and_a_clash_keeps_the_queue(
        app: RabbitApp) -> None:
    # What the contract suite cannot see (test_declaring_is_idempotent_and_a_changed_queue_is_
    # reported): the arguments RabbitMQ holds, after a second declaration and after a refused one.
    configurer(app).configure_subscribers(SUBSCRIBERS)
    before = app.broker.inspector.queues(app.org)
    configurer(app).configure_subscribers(SUBSCRIBERS)
    assert app.broker.inspector.queues(app.org) == before

    with pytest.raises(TopologyMismatchError):
        configurer(app, retry_ttl_ms=9000).configure_subscribers(SUBSCRIBERS)
    retry_queue = f"retry.{app.org}.registration.1.event.user_created.send_mail_handler"
    assert app.broker.inspector.queues(app.org)[retry_queue]["x-message-ttl"] == 200
    assert app.broker.inspector.queues(app.org) == before


def test_main_queues_carry_no_ttl_unless_asked(app: RabbitApp) -> None:
    configurer(app, main_queue_ttl_ms=60000).configure_subscribers(SUBSCRIBERS[:1])

    queue = f"{app.org}.registration.1.event.user_created.send_mail_handler"
    assert app.broker.inspector.queues(app.org)[queue]["x-message-ttl"] == 60000


def test_quorum_queues_get_a_delivery_limit_above_the_retry_budget(app: RabbitApp) -> None:
    configurer(app, queue_type="quorum", max_retries=5).configure_subscribers(SUBSCRIBERS[:1])

    queues = app.broker.inspector.queues(app.org)
    main = queues[f"{app.org}.registration.1.event.user_created.send_mail_handler"]
    assert main["x-queue-type"] == "quorum"
    assert main["x-delivery-limit"] > 6
    assert all(q["x-queue-type"] == "quorum" for q in queues.values())


def test_clear_removes_what_configure_declared(app: RabbitApp) -> None:
    declared = configurer(app)
    declared.configure_subscribers(SUBSCRIBERS)

    declared.clear_subscribers(SUBSCRIBERS)

    assert app.broker.inspector.queues(app.org) == {}
    assert app.broker.inspector.exchanges(app.org) == {}
