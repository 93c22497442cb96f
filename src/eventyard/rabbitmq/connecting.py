"""Opening an AMQP connection: each fail-over host in turn, an error that names the broker."""

from __future__ import annotations

import asyncio

import aiormq
import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractConnection

from eventyard.errors import BrokerConnectionError
from eventyard.rabbitmq.framing import buffered_frames
from eventyard.rabbitmq.settings import ConnectionSettings

_HINT = ("Is the broker running and reachable? Set RABBITMQ_HOST/RABBITMQ_PORT/RABBITMQ_USER/"
         "RABBITMQ_PASSWORD or pass an amqp:// URL.")


def scrub(text: str, settings: ConnectionSettings) -> str:
    """``text`` with the password masked (a short one, or one equal to the user, is left)."""
    secret = settings.password
    if secret and secret != settings.user and len(secret) >= 3:
        text = text.replace(secret, "****")
    return text


async def open_connection(settings: ConnectionSettings, name: str) -> AbstractConnection:
    """A connection to the first host that answers; ``BrokerConnectionError`` if none does."""
    problems = []
    for host in settings.hosts:
        try:
            with buffered_frames():
                return await asyncio.wait_for(aiormq.connect(settings.url(host, name=name)),
                                              settings.connect_timeout)
        except amqp_errors.ProbableAuthenticationError as error:
            problems.append(f"{host}:{settings.port}: login refused for user {settings.user!r} "
                            f"({scrub(str(error), settings)})")
        except Exception as error:
            problems.append(f"{host}:{settings.port}: "
                            f"{scrub(str(error) or type(error).__name__, settings)}")
    raise BrokerConnectionError(
        f"cannot connect to RabbitMQ at {settings.describe()} ({'; '.join(problems)}). {_HINT}")
