"""Moving a service's queues to another queue type (classic to quorum, or back), message by message.

A RabbitMQ queue cannot change type: each queue to change is emptied into a temporary classic
queue ``migrating.<name>``, deleted, declared again with the topology's arguments and bindings,
and refilled. Every copy is published with a publisher confirm, and its original is acked only
once the copy is confirmed, so a run cut at any point loses nothing: what was not acked goes back
to where it was, and a temporary queue left with messages is moved back first by the next run.

While a queue is moved its bindings are put on the queue receiving the messages before they are
taken off the one giving them, so publishers may keep publishing: a message routed in between
goes to both (a duplicate, never a loss). A queue with consumers attached is refused
(``QueueInUseError``). Only the AMQP operations of aiormq's public API are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from eventyard import naming
from eventyard.errors import BrokerError, PublishNackedError, QueueInUseError
from eventyard.headers import encodable
from eventyard.rabbitmq.inspection import queue_state, reply_text, throwaway_channel
from eventyard.topology import BindingSpec, QueueSpec, Topology

logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = "migrating."
# A message's own TTL would expire it in the temporary queue (which dead-letters nowhere): it
# travels in this header meanwhile and is put back with the message.
EXPIRATION_HEADER = "x-eventyard-migrating-expiration"
BATCH = 100  # messages fetched, copied and confirmed together

Action = Literal["keep", "recreate", "missing"]


def temporary_queue(name: str) -> str:
    """The temporary queue that holds ``name``'s messages while it is declared again."""
    temporary = TEMPORARY_PREFIX + name
    if len(temporary.encode()) > naming.MAX_NAME_BYTES:
        temporary = TEMPORARY_PREFIX + hashlib.sha256(name.encode()).hexdigest()
    return temporary


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """What a migration does to one queue, and what it holds now."""

    name: str
    action: Action  # keep: already as configured; recreate: moved; missing: not on the broker
    messages: int
    consumers: int
    leftover: int | None = None  # messages in a temporary queue from an interrupted run
    reason: str = ""  # RabbitMQ's account of the difference (recreate)


@dataclass(slots=True)
class MigrationReport:
    """The plan, and (unless a dry run) the messages moved back into each queue."""

    queue_type: str
    dry_run: bool
    queues: list[QueuePlan]
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> list[QueuePlan]:
        """The queues a run moves (recreated, or with a leftover temporary queue)."""
        return [q for q in self.queues if q.action == "recreate" or q.leftover is not None]


async def plan_migration(connection: AbstractConnection, topology: Topology) -> list[QueuePlan]:
    """Each queue of ``topology`` the service owns, and what a migration would do to it."""
    plans = []
    for queue in topology.for_deletion().queues:
        state = await queue_state(connection, queue.name)
        leftover = await queue_state(connection, temporary_queue(queue.name))
        left = leftover.messages if leftover.exists else None
        if not state.exists:
            plans.append(QueuePlan(queue.name, "missing", 0, 0, left))
            continue
        reason = ""
        async with throwaway_channel(connection) as channel:
            try:  # a no-op when it matches; RabbitMQ says what differs when it does not
                await channel.queue_declare(queue.name, durable=queue.durable,
                                            arguments=dict(queue.arguments))
            except amqp_errors.ChannelClosed as error:
                reason = reply_text(error)
        plans.append(QueuePlan(queue.name, "recreate" if reason else "keep", state.messages,
                               state.consumers, left, reason))
    return plans


async def migrate(connection: AbstractConnection, topology: Topology, *, dry_run: bool = False,
                  bindings: Iterable[BindingSpec] = ()) -> MigrationReport:
    """Declare every queue of ``topology`` the service owns as ``topology`` says, keeping its
    messages; ``bindings`` adds bindings the broker holds beyond the topology's (another
    service's binding to the store). ``QueueInUseError`` before anything changes when a queue
    to move has consumers; a dry run only plans.
    """
    plans = await plan_migration(connection, topology)
    queue_type = next((str(q.arguments.get("x-queue-type", "classic"))
                       for q in topology.queues), "classic")
    report = MigrationReport(queue_type, dry_run, plans)
    busy = [p for p in report.changes if p.consumers]
    if busy:
        raise QueueInUseError(
            "cannot migrate: consumers are attached to " + ", ".join(
                f"{p.name} ({p.consumers})" for p in busy) + "; stop them (every service "
            "consuming these queues) and run the migration again; nothing was changed")
    if dry_run:
        return report
    every = list(dict.fromkeys([*topology.bindings, *bindings]))
    for plan in report.changes:
        queue = topology.queue(plan.name)
        own = [b for b in every if b.queue == plan.name and b.exchange]
        report.moved[plan.name] = await _migrate_queue(connection, queue, plan, own)
    return report


async def _migrate_queue(connection: AbstractConnection, queue: QueueSpec, plan: QueuePlan,
                         bindings: list[BindingSpec]) -> int:
    """Move one queue's messages out, declare it again, move them back; the count moved back."""
    temporary = temporary_queue(queue.name)
    async with _Mover(connection) as mover:
        moved = 0
        if plan.leftover is not None:  # an interrupted run: its messages go back first
            if not (await queue_state(connection, queue.name)).exists:
                await mover.declare(queue)
            moved += await mover.move(temporary, queue.name, bindings, guarded=True)
        if plan.action == "recreate":
            await mover.declare(QueueSpec(temporary))
            out = await mover.move(queue.name, temporary, bindings, guarded=False)
            await mover.declare(queue)
            moved = await mover.move(temporary, queue.name, bindings, guarded=True)
            logger.info("migrated %s: %d messages out, %d back", queue.name, out, moved)
        return moved


class _Mover:
    """Channels to fetch (and ack) and to publish with confirms; both reopened when closed."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.getter: AbstractChannel | None = None
        self.publisher: AbstractChannel | None = None

    async def __aenter__(self) -> _Mover:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in (self.getter, self.publisher):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def channel(self) -> AbstractChannel:
        if self.getter is None or self.getter.is_closed:
            self.getter = await self.connection.channel(publisher_confirms=False)
        return self.getter

    async def declare(self, queue: QueueSpec) -> None:
        await (await self.channel()).queue_declare(queue.name, durable=queue.durable,
                                                   arguments=dict(queue.arguments))

    async def move(self, source: str, target: str, bindings: list[BindingSpec], *,
                   guarded: bool) -> int:
        """Bind ``target``, unbind ``source``, copy every message over, delete ``source``
        (``guarded``: with if-empty and if-unused, for the classic temporary queue)."""
        channel = await self.channel()
        for binding in bindings:  # bound to both for a moment: a message routed then goes to both
            await channel.queue_bind(target, binding.exchange, routing_key=binding.routing_key)
            await channel.queue_unbind(source, binding.exchange, routing_key=binding.routing_key)
        moved = 0
        while True:
            moved += await self._copy_all(source, target)
            if await self._delete(source, target, guarded):
                return moved

    async def _delete(self, queue: str, target: str, guarded: bool) -> bool:
        """Delete ``queue`` if it is (still) empty and unused; False if it was not."""
        if not guarded:
            # The queue to replace may be a quorum queue, which refuses if-empty and if-unused
            # (NOT_IMPLEMENTED, closing the connection), and AMQP cannot tell its type. It is
            # unbound and was just emptied (a consumer attached since would get nothing, and is
            # cancelled): what the delete still removed is said.
            deleted = await (await self.channel()).queue_delete(queue)
            if deleted.message_count:
                raise BrokerError(
                    f"{deleted.message_count} messages reached {queue} after it was emptied and "
                    "unbound, and went with it: something publishes to it by name")
            return True
        try:
            await (await self.channel()).queue_delete(queue, if_unused=True, if_empty=True)
        except amqp_errors.ChannelPreconditionFailed:
            state = await queue_state(self.connection, queue)
            if state.consumers:
                raise QueueInUseError(
                    f"a consumer attached to {queue} during the migration: stop it and run the "
                    f"migration again (the messages moved so far wait in {target})") from None
            return False  # a message came: the caller moves it too
        return True

    async def _copy_all(self, source: str, target: str) -> int:
        copied = 0
        while True:
            batch = await self._fetch(source)
            if not batch:
                return copied
            await self._copy(batch, source, target)
            copied += len(batch)

    async def _fetch(self, queue: str) -> list[DeliveredMessage]:
        channel = await self.channel()
        batch = []
        for _ in range(BATCH):
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetEmpty):
                break
            batch.append(message)
        return batch

    async def _copy(self, batch: list[DeliveredMessage], source: str, target: str) -> None:
        """Publish copies of ``batch`` to ``target``; ack each original whose copy is confirmed."""
        if self.publisher is None or self.publisher.is_closed:
            self.publisher = await self.connection.channel(publisher_confirms=True,
                                                           on_return_raises=False)
        to_temporary = target.startswith(TEMPORARY_PREFIX)
        results = await asyncio.gather(*(self.publisher.basic_publish(
            bytes(m.body), exchange="", routing_key=target, mandatory=True,
            properties=_copied(m.header.properties, len(m.body), to_temporary)) for m in batch),
            return_exceptions=True)
        getter = await self.channel()
        failed = None
        for message, result in zip(batch, results, strict=True):
            tag = int(getattr(message.delivery, "delivery_tag", 0))
            if isinstance(result, BaseException | DeliveredMessage):
                failed = failed or result
                await getter.basic_reject(tag, requeue=True)
            else:
                await getter.basic_ack(tag)
        if isinstance(failed, DeliveredMessage):
            raise BrokerError(f"the copies of {source}'s messages reached no queue {target}")
        if isinstance(failed, amqp_errors.DeliveryError):
            raise PublishNackedError(f"RabbitMQ refused a copy of a message of {source} into "
                                     f"{target}; it stays in {source}: run the migration again")
        if failed is not None:
            raise failed


def _copied(old: spec.Basic.Properties, size: int, to_temporary: bool) -> spec.Basic.Properties:
    """``old`` for a copy: every property kept, persistent; a per-message TTL parked in a header
    on the way into the temporary queue and restored on the way out."""
    headers: dict[str, Any] = dict(old.headers or {})
    headers.pop("x-delivery-count", None)  # a quorum queue's count of deliveries, not the message's
    expiration = old.expiration
    if to_temporary and expiration is not None:
        headers[EXPIRATION_HEADER], expiration = expiration, None
    elif not to_temporary and EXPIRATION_HEADER in headers:
        expiration = str(headers.pop(EXPIRATION_HEADER))

    def build(table: dict[str, Any]) -> spec.Basic.Properties:
        properties = spec.Basic.Properties(
            content_type=old.content_type, content_encoding=old.content_encoding,
            headers=table or None, delivery_mode=2, priority=old.priority,
            correlation_id=old.correlation_id, reply_to=old.reply_to, expiration=expiration,
            message_id=old.message_id, timestamp=old.timestamp, message_type=old.message_type,
            user_id=old.user_id, app_id=old.app_id)
        amqp_frame.marshal(amqp_header.ContentHeader(0, size, properties), 1)  # encodable?
        return properties

    try:
        return build(headers)
    except Exception:  # a header pamqp read but cannot write back: it goes as text
        return build(encodable(headers))
