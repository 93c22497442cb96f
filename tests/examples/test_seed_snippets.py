"""The seed document's code snippets, each run as a script of its own with ``petisco`` renamed.

A snippet's script is the snippet as written, preceded only by what it uses from an earlier one
(the ``UserCreated`` definition). The consume snippet also annotates its handler with ``Event``,
which the seed never imports: its script imports it from ``eventyard``, the one line a reader
adds. (Trailing spaces after two lines of the seed are dropped.) The snippets hardcode
``acme``/``alice`` and the ``store`` queue, so each test runs them in a vhost of its own on the
test broker and deletes the vhost afterwards.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventyard import InfoId
from support.scripts import Script, run_script
from support.vhost import PrivateVhost, clean_env
from support.waiting import wait_until

CREATE_A_DOMAIN_EVENT = """\
from eventyard import DomainEvent, Uuid

class UserCreated(DomainEvent):
    user_id: Uuid

domain_event = UserCreated(user_id=Uuid.v4())
"""

CONFIGURE_RABBITMQ = """\
from eventyard import DomainEvent, MessageSubscriber
from eventyard.extra.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer
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

START_CONSUMING = """\
from eventyard import MessageSubscriber
from eventyard.extra.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer
from meiga import Result, Error, isSuccess, isFailure


def send_mail_handler(event: Event) -> Result[bool, Error]:
  # Do your stuff here
  return isSuccess # if fails, returns isFailure


# Define Subscribers
domain_event = UserCreated(user_id=Uuid.v4())
subscribers = [MessageSubscriber.from_message(domain_event, [send_mail_handler])]

# Define RabbitMQ Consumer and start

organization = "alice"
service = "eventyard"
max_retries = 5
connector = RabbitMqConnector()
consumer = RabbitMqMessageConsumer(connector, organization, service, max_retries)
consumer.add_subscribers(subscribers)
consumer.start()
"""

PUBLISH = """\
from eventyard.extra.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus

connector = RabbitMqConnector()
organization = "alice"
service = "eventyard"
bus = RabbitMqDomainEventBus(connector, organization, service)

domain_event = UserCreated(user_id=Uuid.v4())

bus.publish(domain_event)
"""

TRICKS = """\
user_created = UserCreated(user_id, name).add_info_id(info_id)
"""

IMPORT_EVENT = "from eventyard import Event\n"
MAIL_QUEUE = "alice.eventyard.1.event.user_created.send_mail_handler"


def script(tmp_path: Path, name: str, *parts: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text("\n".join(parts))
    return path


def test_the_domain_event_snippet_runs(tmp_path: Path) -> None:
    result = run_script(script(tmp_path, "event", CREATE_A_DOMAIN_EVENT), clean_env())
    assert result.returncode == 0, result.stderr


@pytest.mark.rabbitmq
def test_the_configure_snippet_declares_the_seeds_topology(tmp_path: Path, vhost: PrivateVhost) -> None:
    result = run_script(script(tmp_path, "configure", CREATE_A_DOMAIN_EVENT, CONFIGURE_RABBITMQ),
                        vhost.env())

    assert result.returncode == 0, result.stderr
    queue = "acme.registration.1.event.user_created.send_mail_handler"
    assert {queue, f"retry.{queue}", f"dead_letter.{queue}", "store"} <= set(vhost.inspector.queues())
    assert ("acme.registration", queue, "acme.registration.1.event.user_created") in (
        vhost.inspector.bindings(queue))


@pytest.mark.rabbitmq
@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_consume_snippet_consumes_until_a_signal_then_exits_0(
        tmp_path: Path, vhost: PrivateVhost, stop_with: signal.Signals) -> None:
    consume = script(tmp_path, "consume", CREATE_A_DOMAIN_EVENT, IMPORT_EVENT, START_CONSUMING)
    publish = script(tmp_path, "publish", CREATE_A_DOMAIN_EVENT, PUBLISH)
    consumer = Script(consume, vhost.env())
    try:
        consumer.wait_held()
        assert vhost.queue_state(MAIL_QUEUE) == (0, 1)  # declared by the snippet, one consumer
        observer = vhost.observe("alice.eventyard", "alice.eventyard.1.event.user_created")

        published = run_script(publish, vhost.env())

        assert published.returncode == 0, published.stderr
        wait_until(lambda: vhost.queue_state(observer) == (1, 0), what="the event routed")
        wait_until(lambda: vhost.queue_state(MAIL_QUEUE) == (0, 1), timeout=20,
                   what="the consumer to take the event")
        consumer.process.send_signal(stop_with)
        assert consumer.finish(15) == 0, consumer.output()
    finally:
        consumer.kill()
    # Acked (a delivery left unacked goes back to its queue when the consumer's channel closes),
    # not retried or parked; and with no consumer left the next event stays queued.
    assert vhost.queue_state(MAIL_QUEUE) == (0, 0)
    assert vhost.queue_state(f"retry.{MAIL_QUEUE}") == (0, 0)
    assert vhost.queue_state(f"dead_letter.{MAIL_QUEUE}") == (0, 0)
    assert run_script(publish, vhost.env()).returncode == 0
    assert vhost.queue_state(MAIL_QUEUE) == (1, 0)


@pytest.fixture
def unanswered() -> Iterator[socket.socket]:
    """A port that listens and never answers: a connection attempt waits there to be counted."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        yield listener


def attempts(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


@pytest.mark.parametrize("variable", ["EVENTYARD_MESSAGE_BROKER", "PETISCO_EVENT_MESSAGE_BROKER"])
def test_notimplemented_makes_the_seeds_scripts_publish_nowhere_and_never_connect(
        tmp_path: Path, unanswered: socket.socket, variable: str) -> None:
    port = unanswered.getsockname()[1]
    env = clean_env(RABBITMQ_HOST="127.0.0.1", RABBITMQ_PORT=str(port), **{variable: "notimplemented"})
    for name, snippet in (("configure", CONFIGURE_RABBITMQ), ("publish", PUBLISH)):
        result = run_script(script(tmp_path, name, CREATE_A_DOMAIN_EVENT, snippet), env)
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == [
            f"the message broker is notimplemented: RabbitMqConnector('amqp://guest@127.0.0.1:{port}/') "
            "publishes nowhere and never connects"]
    consumer = Script(script(tmp_path, "consume", CREATE_A_DOMAIN_EVENT, IMPORT_EVENT, START_CONSUMING),
                      env)
    try:
        consumer.wait_held()  # a consumer of nothing still runs until it is stopped
        consumer.process.send_signal(signal.SIGTERM)
        assert consumer.finish(15) == 0, consumer.output()
    finally:
        consumer.kill()
    assert attempts(unanswered) == 0


def test_the_tricks_snippet_adds_info_id_to_positional_fields() -> None:
    from eventyard import DomainEvent, Uuid

    class UserCreated(DomainEvent):
        user_id: Uuid
        name: str

    namespace: dict[str, Any] = {"UserCreated": UserCreated, "user_id": Uuid.v4(), "name": "ada",
                                 "info_id": InfoId(client_id="acme", correlation_id="c-1")}
    exec(compile(TRICKS, "<seed snippet>", "exec"), namespace)
    event = namespace["user_created"]
    assert event.name == "ada"
    assert event.get_meta()["info_id"] == {"client_id": "acme", "correlation_id": "c-1"}
