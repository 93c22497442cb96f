"""Publishing messages through a ``Transport``: the async domain-event and command buses."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from eventyard import codec, naming
from eventyard.errors import InvalidMessageError, UnroutableError
from eventyard.messages import Command, DomainEvent, Message
from eventyard.observability import INSTRUMENTS, Sending, instrument, stamp
from eventyard.ports import OutgoingMessage, TransportSource

logger = logging.getLogger(__name__)


def tracing_headers(message: Message) -> dict[str, Any]:
    """Headers that carry the message's tracing ids (from its ``InfoId``)."""
    meta = (message.__pydantic_private__ or {}).get("_meta") or {}  # no copy: read only
    info = meta.get("info_id")
    if not isinstance(info, dict):
        return {}
    return {key: str(info[key]) for key in ("correlation_id", "client_id", "user_id")
            if info.get(key) is not None}


def outgoing(org: str, svc: str, message: Message) -> OutgoingMessage:
    """The AMQP message for publishing ``message`` to ``org``/``svc``."""
    name = message.get_message_name()
    correlation_id = stamp(message)  # first: a message published by a handler gains meta
    return OutgoingMessage(
        exchange=naming.exchange(org, svc),
        routing_key=naming.routing_key(org, svc, message.get_message_version(),
                                       message.get_message_kind(), name),
        body=codec.encode(message),
        headers=tracing_headers(message),
        message_id=message.get_message_id(),
        type=name,
        timestamp=int(time.time()),
        correlation_id=correlation_id,
    )


def start_sending(batch: Sequence[OutgoingMessage]) -> Sending | None:
    """Tell the instruments (if any) that ``batch`` is being sent: its span starts and the
    trace context goes in its headers. None when no instrument is active."""
    instruments = INSTRUMENTS.active
    return instruments.sending(batch) if instruments is not None else None


def as_list(messages: Message | Sequence[Message], kind: type[Message]) -> list[Message]:
    """One message or a list of them, as a list; ``InvalidMessageError`` for another kind."""
    items: list[Message] = (
        list(messages) if isinstance(messages, list | tuple) else [messages]  # type: ignore[list-item]
    )
    for item in items:
        if not isinstance(item, kind):
            raise InvalidMessageError(f"expected {kind.__name__} instances, got {type(item).__name__}")
    return items


class _AsyncBus:
    _kind: type[Message] = Message

    def __init__(self, transports: TransportSource, organization: str, service: str) -> None:
        self._transports = transports
        self.organization = naming.check_word(organization, "organization")
        self.service = naming.check_word(service, "service")
        instrument()

    def prepare(self, messages: Message | Sequence[Message]) -> tuple[list[Message],
                                                                     list[OutgoingMessage]]:
        """Check ``messages`` and build what goes on the wire for them."""
        items = as_list(messages, self._kind)
        return items, [outgoing(self.organization, self.service, m) for m in items]

    async def _send(self, messages: Message | Sequence[Message]) -> None:
        items, batch = self.prepare(messages)
        if not items:
            return
        transport = await self._transports()
        sending = start_sending(batch)
        if sending is None:
            report_unroutable(items, batch, await transport.publish(batch))
            return
        try:
            report_unroutable(items, batch, await transport.publish(batch))
        except BaseException as error:
            sending.end(error)
            raise
        sending.end(None)


def report_unroutable(items: Sequence[Message], batch: Sequence[OutgoingMessage],
                      unroutable: Sequence[int]) -> None:
    """Raise ``UnroutableError`` for a command that reached no queue; log such events."""
    for index in unroutable:
        message = items[index]
        if isinstance(message, Command):
            raise UnroutableError(
                f"command {message.get_message_name()} ({batch[index].routing_key}) reached no "
                "queue: configure its subscriber (RabbitMqMessageConfigurer) before dispatching"
            )
        logger.warning("event %s (%s) reached no queue", message.get_message_name(),
                       batch[index].routing_key)


class AsyncDomainEventBus(_AsyncBus):
    """Publishes domain events; returns once the broker has confirmed every one."""

    _kind = DomainEvent

    async def publish(self, events: DomainEvent | Sequence[DomainEvent]) -> None:
        """Publish one event or a list of them (pipelined)."""
        await self._send(events)


class AsyncCommandBus(_AsyncBus):
    """Dispatches commands; a command that reaches no queue raises ``UnroutableError``."""

    _kind = Command

    async def dispatch(self, commands: Command | Sequence[Command]) -> None:
        """Dispatch one command or a list of them (pipelined)."""
        await self._send(commands)
