"""TLS with a private CA, mutual TLS included, on a throwaway node (the worker's own).

The node listens for TLS with ``verify_peer`` and ``fail_if_no_peer_cert``: a client must show
a certificate signed by the test CA. Both publish paths (the blocking single publish and the
event loop's) and a consumer run over it; each way of getting TLS wrong is named.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventyard import BrokerConnectionError, DomainEvent, MessageSubscriber, Uuid
from eventyard.consuming import ConsumerSettings
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.topology import TopologyOptions
from support.broker import Inspector
from support.rabbitnode import CTL, ThrowawayNode, WorkerNode
from support.tlscerts import Pki
from support.waiting import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.fault]


class UserCreated(DomainEvent):
    user_id: Uuid


@dataclass
class TlsNode:
    """The node, its TLS port, the certificates and an inspector (over plain AMQP)."""

    node: ThrowawayNode
    tls_port: int
    pki: Pki
    inspector: Inspector

    def url(self, host: str = "localhost", **query: Path | str) -> str:
        params = "&".join(f"{name}={value}" for name, value in query.items())
        return f"amqps://guest:guest@{host}:{self.tls_port}/" + (f"?{params}" if params else "")

    def mutual(self, host: str = "localhost", **query: Path | str) -> str:
        """The URL of a client that trusts the CA and shows a certificate it signed."""
        files: dict[str, Path | str] = {"cafile": self.pki.ca, "certfile": self.pki.client_cert,
                                        "keyfile": self.pki.client_key}
        return self.url(host, **{**files, **query})


@pytest.fixture(scope="module")
def tls_node(worker_node: WorkerNode) -> TlsNode:
    """The worker's node (see tests/conftest.py), which listens for TLS too."""
    if worker_node.pki is None:
        pytest.fail("TLS tests need a private CA made with openssl: install openssl", pytrace=False)
    node = worker_node.node
    node.start()
    # The node's own rabbitmqctl: /usr/sbin's wrapper switches to the system node's user.
    ctl_env = {**node.env(), "PATH": f"{Path(CTL).parent}:{os.environ.get('PATH', '')}"}
    return TlsNode(node, worker_node.tls_port, worker_node.pki,
                   Inspector(node.url, ctl_env=ctl_env, nodename=node.nodename))


@pytest.fixture
def org(tls_node: TlsNode) -> str:
    """An organisation of this test's own on the TLS node (what it declares goes with the node,
    at the end of the session: deleting it after each test cost seconds of rabbitmqctl)."""
    return f"t{uuid.uuid4().hex[:10]}"


def _failures(connector: RabbitMqConnector) -> list[str]:
    """The error of a single publish (blocking path) and of a list (event-loop path)."""
    bus = RabbitMqDomainEventBus(connector, "acme", "registration")
    messages = []
    try:
        for events in (UserCreated(user_id=Uuid.v4()), [UserCreated(user_id=Uuid.v4())] * 2):
            with pytest.raises(BrokerConnectionError) as raised:
                bus.publish(events)
            messages.append(str(raised.value))
    finally:
        connector.close()
    return messages


def _no_aiormq_errors(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("aiormq") and r.levelno >= logging.ERROR] == []


def test_mutual_tls_publish_and_consume_round_trip(tls_node: TlsNode, org: str) -> None:
    handled: list[Uuid] = []

    def record_user(event: UserCreated) -> None:
        handled.append(event.user_id)

    subscribers = [MessageSubscriber.from_message(UserCreated, [record_user])]
    options = TopologyOptions(retry_ttl_ms=200, store_queue=f"store.{org}")
    connector = RabbitMqConnector(tls_node.mutual())
    try:
        RabbitMqMessageConfigurer(connector, org, "registration",
                                  options=options).configure_subscribers(subscribers)
        bus = RabbitMqDomainEventBus(connector, org, "registration")
        sent = [UserCreated(user_id=Uuid.v4()) for _ in range(4)]
        bus.publish(sent[0])  # the blocking path, on its own TLS socket
        bus.publish(sent[1:])  # the event loop's path (aiormq)
        consumer = RabbitMqMessageConsumer(connector, org, "registration", 1,
                                           settings=ConsumerSettings(store_queue=options.store_queue))
        consumer.add_subscribers(subscribers)
        consumer.start()
        try:
            wait_until(lambda: len(handled) == 4, 15, "4 events consumed over mutual TLS")
        finally:
            consumer.stop()
    finally:
        connector.close()
    assert sorted(handled) == sorted(e.user_id for e in sent)
    assert tls_node.inspector.count(options.store_queue) == 4


def test_mutual_tls_from_the_variables(tls_node: TlsNode, org: str) -> None:
    env = {"RABBITMQ_SSL": "true", "RABBITMQ_HOST": "127.0.0.1",
           "RABBITMQ_PORT": str(tls_node.tls_port), "RABBITMQ_SSL_CAFILE": str(tls_node.pki.ca),
           "RABBITMQ_SSL_CERTFILE": str(tls_node.pki.client_cert),
           "RABBITMQ_SSL_KEYFILE": str(tls_node.pki.client_key), "RABBITMQ_SSL_VERIFY": "true"}
    options = TopologyOptions(store_queue=f"store.{org}")
    connector = RabbitMqConnector(environ=env)
    try:
        assert connector.settings.describe().startswith("amqps://guest@127.0.0.1:")
        RabbitMqMessageConfigurer(connector, org, "registration", options=options).configure()
        bus = RabbitMqDomainEventBus(connector, org, "registration")
        bus.publish(UserCreated(user_id=Uuid.v4()))
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(2)])
    finally:
        connector.close()
    assert tls_node.inspector.count(options.store_queue) == 3


def test_a_client_without_a_certificate_is_refused(tls_node: TlsNode,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    for message in _failures(RabbitMqConnector(tls_node.url(cafile=tls_node.pki.ca))):
        assert f"localhost:{tls_node.tls_port}: " in message
        assert "client certificate" in message
        assert "RABBITMQ_SSL_CERTFILE" in message and "RABBITMQ_SSL_KEYFILE" in message
    _no_aiormq_errors(caplog)


def test_a_client_certificate_from_another_ca_is_refused(tls_node: TlsNode,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    url = tls_node.mutual(certfile=tls_node.pki.stranger_cert, keyfile=tls_node.pki.stranger_key)
    for message in _failures(RabbitMqConnector(url)):
        assert "client certificate" in message and "a CA the broker trusts" in message
    _no_aiormq_errors(caplog)


@pytest.mark.parametrize("ca", ["other", "system"])
def test_a_wrong_ca_is_a_clear_tls_error(tls_node: TlsNode, ca: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    url = (tls_node.mutual(cafile=tls_node.pki.other_ca) if ca == "other" else
           tls_node.url(certfile=tls_node.pki.client_cert, keyfile=tls_node.pki.client_key))
    for message in _failures(RabbitMqConnector(url)):
        assert "TLS: the broker's certificate is not trusted" in message
        assert "RABBITMQ_SSL_CAFILE" in message and "cafile=" in message
    _no_aiormq_errors(caplog)


def test_the_certificate_must_name_the_host(tls_node: TlsNode, org: str) -> None:
    for message in _failures(RabbitMqConnector(
            tls_node.mutual(server_name_indication="rabbit.example"))):
        assert "certificate is not for 'rabbit.example'" in message
        assert "RABBITMQ_SSL_SERVER_NAME" in message
    # The name check can be switched off (the CA still is checked), or the whole verification.
    options = TopologyOptions(store_queue=f"store.{org}")
    for url in (tls_node.mutual(server_name_indication="disable"),
                tls_node.mutual(cafile=tls_node.pki.other_ca, verify="verify_none")):
        connector = RabbitMqConnector(url)
        try:
            RabbitMqMessageConfigurer(connector, org, "registration", options=options).configure()
            RabbitMqDomainEventBus(connector, org, "registration").publish(
                UserCreated(user_id=Uuid.v4()))
        finally:
            connector.close()
    assert tls_node.inspector.count(options.store_queue) == 2


def test_plain_and_tls_ports_mixed_up_are_named(tls_node: TlsNode) -> None:
    tls_to_plain = RabbitMqConnector(
        f"amqps://guest:guest@127.0.0.1:{tls_node.node.port}/?cafile={tls_node.pki.ca}")
    for message in _failures(tls_to_plain):
        assert "the server did not answer in TLS" in message and "5671" in message
    plain_to_tls = RabbitMqConnector(f"amqp://guest:guest@127.0.0.1:{tls_node.tls_port}/")
    for message in _failures(plain_to_tls):
        assert "closed the connection before the AMQP handshake" in message
        assert "amqps://" in message
