"""Looking at what a RabbitMQ broker holds, over plain AMQP: queue state and a topology check.

AMQP tells whether an exchange or queue exists (passive declare) and whether its arguments
match (a re-declare fails with 406 PRECONDITION_FAILED when they differ). It cannot list
queues or bindings: that needs the management plugin or ``rabbitmqctl``, so bindings are
reported as not checked rather than guessed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection

from eventyard.rabbitmq.connecting import open_connection
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.topology import ExchangeSpec, QueueSpec, Topology

logger = logging.getLogger(__name__)

BINDINGS_NOT_CHECKED = (
    "bindings are not checked: AMQP cannot list them (use `rabbitmqctl list_bindings` or the "
    "management plugin); `eventyard configure` declares missing ones idempotently"
)


@contextlib.asynccontextmanager
async def connect(settings: ConnectionSettings, *, name: str = "eventyard-cli",
                  ) -> AsyncIterator[AbstractConnection]:
    """An AMQP connection for the length of the block; ``BrokerConnectionError`` names the broker."""
    connection = await open_connection(settings, name)
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def reply_text(error: BaseException) -> str:
    """RabbitMQ's reply text carried by a channel error (``PRECONDITION_FAILED - ...``)."""
    frame = next((a for a in getattr(error, "args", ()) if hasattr(a, "reply_text")), None)
    return str(frame.reply_text) if frame is not None else str(error)


@contextlib.asynccontextmanager
async def throwaway_channel(connection: AbstractConnection) -> AsyncIterator[AbstractChannel]:
    """A channel that a failed declare may close; closed at the end if still open."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as the broker reports it: ready messages and consumers (0 when missing)."""

    name: str
    exists: bool
    messages: int = 0
    consumers: int = 0


async def queue_state(connection: AbstractConnection, name: str) -> QueueState:
    """Whether ``name`` exists, and its ready messages and consumers (passive declare)."""
    async with throwaway_channel(connection) as channel:
        try:
            ok = await channel.queue_declare(name, passive=True)
        except amqp_errors.ChannelNotFoundEntity:
            return QueueState(name, False)
        return QueueState(name, True, int(ok.message_count or 0), int(ok.consumer_count or 0))


Problem = Literal["missing", "mismatch"]


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the broker differs from the expected topology."""

    kind: Literal["exchange", "queue"]
    name: str
    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify_topology`` found; ``ok`` when nothing differs."""

    differences: tuple[Difference, ...]
    exchanges_checked: int
    queues_checked: int
    bindings_expected: int
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every expected exchange and queue exists with the expected arguments."""
        return not self.differences


async def _check_exchange(connection: AbstractConnection, spec: ExchangeSpec) -> Difference | None:
    async with throwaway_channel(connection) as channel:
        try:
            await channel.exchange_declare(spec.name, passive=True)
        except amqp_errors.ChannelNotFoundEntity:
            return Difference("exchange", spec.name, "missing", "does not exist")
    # It exists: declaring it again is a no-op when type and durability match, a 406 if not.
    async with throwaway_channel(connection) as channel:
        try:
            await channel.exchange_declare(spec.name, exchange_type=spec.type, durable=spec.durable)
        except amqp_errors.ChannelClosed as error:
            return Difference("exchange", spec.name, "mismatch", reply_text(error))
    return None


async def _check_queue(connection: AbstractConnection, spec: QueueSpec) -> Difference | None:
    if not (await queue_state(connection, spec.name)).exists:
        return Difference("queue", spec.name, "missing", "does not exist")
    async with throwaway_channel(connection) as channel:
        try:
            await channel.queue_declare(spec.name, durable=spec.durable,
                                        arguments=dict(spec.arguments))
        except amqp_errors.ChannelClosed as error:
            detail = reply_text(error)
        else:
            return None
    type_text = await _wrong_type(connection, spec, detail)
    if type_text:
        expected = spec.arguments.get("x-queue-type", "classic")
        detail = (f"not a {expected} queue, as configured ({type_text}); a queue cannot change "
                  "type: move its messages to a new queue (docs/cluster.md)")
    return Difference("queue", spec.name, "mismatch", detail)


_ABSENT = re.compile(r"inequivalent arg '([^']+)' .* but current is none$")


async def _wrong_type(connection: AbstractConnection, spec: QueueSpec, detail: str) -> str:
    """RabbitMQ's words if the queue is of another type than ``spec``'s, else ''.

    RabbitMQ names one differing argument per refusal and checks the type late, so arguments
    the queue does not have (a classic queue lacks the quorum ones) are left out one at a time
    until the type, or an argument the queue holds otherwise, is named.
    """
    arguments = dict(spec.arguments)
    for _ in range(len(arguments)):
        if "'x-queue-type'" in detail:
            return detail
        absent = _ABSENT.search(detail)
        if absent is None or absent.group(1) not in arguments:
            return ""
        del arguments[absent.group(1)]
        async with throwaway_channel(connection) as channel:
            try:
                await channel.queue_declare(spec.name, durable=spec.durable, arguments=arguments)
            except amqp_errors.ChannelClosed as error:
                detail = reply_text(error)
            else:
                return ""
    return detail if "'x-queue-type'" in detail else ""


async def verify_topology(connection: AbstractConnection, topology: Topology) -> VerifyReport:
    """Compare what the broker holds with ``topology``; create nothing that is missing.

    Existence is checked with passive declares; arguments by re-declaring what exists on a
    throwaway channel (a 406 carries RabbitMQ's description of the difference).
    """
    differences: list[Difference] = []
    for exchange in topology.exchanges:
        found = await _check_exchange(connection, exchange)
        if found is not None:
            differences.append(found)
    for queue in topology.queues:
        found = await _check_queue(connection, queue)
        if found is not None and found.problem == "mismatch":
            advice = (topology.store_migration(queue.name, found.detail)
                      or topology.mismatch_hint(queue.name).strip())
            found = dataclasses.replace(found, detail=f"{found.detail}. {advice}".rstrip(". "))
        if found is not None:
            differences.append(found)
    logger.debug("verified %d exchanges and %d queues: %d differences",
                 len(topology.exchanges), len(topology.queues), len(differences))
    return VerifyReport(tuple(differences), len(topology.exchanges), len(topology.queues),
                        len(topology.bindings), (BINDINGS_NOT_CHECKED,))
