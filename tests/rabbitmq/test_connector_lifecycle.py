"""The connector's lifecycle on a real broker (``with`` / ``async with``), and a bug in a publish
reported as the bug it is, not as a lost connection."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventyard import BrokerConnectionError, DomainEvent, Uuid
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqTransport,
)
from rabbitmq.conftest import RabbitApp

pytestmark = pytest.mark.rabbitmq

ASYNC_APP = Path(__file__).parent.parent / "support" / "async_app.py"


class UserCreated(DomainEvent):
    user_id: Uuid


class Hostile(str):
    """A header value the AMQP client takes for a string and then cannot encode."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        raise RuntimeError("this value refuses to be encoded")


@pytest.mark.parametrize("consumer", ["stopped", "unstopped"])
def test_an_async_application_on_rabbitmq_ends_without_a_warning(app: RabbitApp, consumer: str) -> None:
    # Before `async with`, the same application logged "connection to RabbitMQ ... lost
    # (CancelledError); reconnecting" and "Task was destroyed but it is pending!" at its end.
    env = {**os.environ, "PYTHONASYNCIODEBUG": "1"}
    args = [app.broker.url, app.org, *(["unstopped"] if consumer == "unstopped" else [])]
    result = subprocess.run([sys.executable, "-W", "error", str(ASYNC_APP), "rabbitmq", *args],
                            env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "handled\n", "")
    assert app.broker.inspector.count(f"{app.org}.pinger.1.event.ping_sent.note_ping") == 0


def test_with_closes_the_connections_and_stops_the_loop_thread(app: RabbitApp) -> None:
    with RabbitMqConnector(app.broker.url) as connector:
        RabbitMqMessageConfigurer(connector, app.org, app.service, options=app.options).configure()
        bus = RabbitMqDomainEventBus(connector, app.org, app.service)
        bus.publish(UserCreated(user_id=Uuid.v4()))  # the blocking publisher
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(3)])  # the loop thread's connection
        assert connector.loop_thread.is_started
    assert not connector.loop_thread.is_started
    assert app.broker.inspector.count(app.store_queue) == 4


@pytest.mark.parametrize("fast_paths", ["1", "0"], ids=["fast paths", "public API"])
async def test_a_bug_in_a_publish_is_not_reported_as_a_lost_connection(
        app: RabbitApp, fast_paths: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTYARD_AMQP_FAST_PATHS", fast_paths)
    await asyncio.to_thread(RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                                                      options=app.options).configure)
    exchange, key = f"{app.org}.{app.service}", f"{app.org}.{app.service}.1.event.user_created"
    transport = RabbitMqTransport(app.connector.settings)
    await transport.connect()
    try:
        hostile = OutgoingMessage(exchange, key, b"{}", headers={"note": Hostile("x")})
        with pytest.raises(RuntimeError, match="refuses to be encoded") as raised:
            await transport.publish([hostile])
        assert not isinstance(raised.value, BrokerConnectionError)

        # The connection was never in question: the next publish goes through on it.
        assert await transport.publish([OutgoingMessage(exchange, key, b"{}")]) == []
    finally:
        await transport.close()
    assert await asyncio.to_thread(app.broker.inspector.count, app.store_queue) == 1  # the good one
