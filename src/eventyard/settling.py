"""Settling: ack a handled delivery; retry, dead-letter or requeue a failed one (DESIGN §5).

A failed message goes to its subscriber's retry queue, or to its dead-letter queue when no
retries are left, and the original is acked only after that copy is confirmed. A body that
cannot be decoded is poison: dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageDecodeError,
    PublishNackedError,
)
from eventyard.forwarding import Forwarder, TransportHolder, key_of
from eventyard.messages import Message
from eventyard.observability import INSTRUMENTS, fields
from eventyard.ports import UNREADABLE_PROPERTIES, Delivery
from eventyard.retry import Decision, RetryPolicy, deaths_are_valid, redelivery_count
from eventyard.subscribers import SUCCESS, Outcome, outcome_of_exception
from eventyard.topology import TopologyOptions

# The consumer's logs keep the one logger name that docs/observability.md documents.
logger = logging.getLogger("eventyard.consuming")

_REQUEUE_PAUSE_SECONDS = 1.0
# A retry is logged at WARNING once a minute per queue (with how many came since), else INFO.
_RETRY_WARNING_SECONDS = 60.0

EventKind = Literal["handled", "failed", "retried", "dead_lettered", "poison", "chaos_nack"]


@dataclass(frozen=True, slots=True)
class ConsumerEvent:
    """Something a consumer did with one delivery; observers receive these."""

    kind: EventKind
    queue: str
    message: Message | None
    redelivery_count: int
    outcome: Outcome = SUCCESS
    message_id: str | None = None


Observer = Callable[[ConsumerEvent], None]


class ConsumerHost(TransportHolder, Protocol):
    """What settling needs of its consumer (``AsyncMessageConsumer`` implements it)."""

    @property
    def options(self) -> TopologyOptions | None:
        """The topology options the service was configured with, if any."""
        ...

    @property
    def observed(self) -> bool:
        """True if any observer listens (events are built only then, where it matters)."""
        ...

    def notify(self, event: ConsumerEvent) -> None:
        """Hand ``event`` to every observer."""
        ...

    def track(self, task: asyncio.Task[None]) -> None:
        """Have the consumer's stop wait for ``task``."""
        ...


class Settler:
    """Settles the deliveries of one queue once their outcome is known."""

    def __init__(self, host: ConsumerHost, queue: str, forwarder: Forwarder,
                 policy: RetryPolicy, *, delayed: bool, ordered: bool) -> None:
        self.host = host
        self.queue = queue
        self.forwarder = forwarder
        self.policy = policy
        self.delayed = delayed
        self.ordered = ordered
        self._retries = 0  # retries since the last one logged at WARNING
        self._warned_at = -math.inf

    async def recover(self, delivery: Delivery, error: Exception) -> None:
        """Deal with ``error``, raised while processing or settling ``delivery``."""
        if isinstance(error, BrokerConnectionError):
            # The connection dropped before the copy was confirmed: the original was never
            # acked, so the broker delivers it again once we have reconnected (and then it is
            # dead-lettered: see settle_suspect).
            logger.warning("lost the connection settling a delivery from %s (%s); it will be "
                           "delivered again", self.queue, error)
            return
        if isinstance(error, ConfigurationError | PublishNackedError):
            # The topology is missing or the broker refuses the copy for now: hand the message
            # back, after a pause so this does not spin, until the operator has fixed it.
            logger.error("could not settle a delivery from %s; requeueing it", self.queue,
                         exc_info=error)
            await asyncio.sleep(_REQUEUE_PAUSE_SECONDS)
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
            return
        # A step of ours failed on this message itself (its copy cannot be built or sent):
        # retrying would fail the same way, so it is dead-lettered as it is.
        logger.error("could not settle a delivery from %s; dead-lettering it as it is",
                     self.queue, exc_info=error)
        with contextlib.suppress(Exception):
            await self.park(delivery, outcome_of_exception(error))

    async def park(self, delivery: Delivery, outcome: Outcome) -> None:
        """Dead-letter ``delivery`` without the usual copy: the broker does it, through the
        queue's dead-letter exchange (or, where RabbitMQ could not read its ``x-death``, a copy
        with a summary of its headers goes instead)."""
        if not deaths_are_valid(delivery.headers):
            try:
                await self.forwarder.forward(delivery, outcome,
                                             redelivery_count(delivery.headers), retry=False,
                                             keep_headers=False)
                return
            except Exception:
                logger.exception("could not dead-letter a delivery from %s with a summary of its "
                                 "headers", self.queue)
        await delivery.reject(requeue=False)

    async def settle(self, delivery: Delivery, message: Message, outcome: Outcome,
                     count: int) -> None:
        """Ack a handled delivery; retry or dead-letter a failed one, as its policy decides."""
        if outcome.success:
            await delivery.ack()
            if self.host.observed:
                self.host.notify(ConsumerEvent("handled", self.queue, message, count,
                                     message_id=message.get_message_id()))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("handled %s %s from %s (attempt %d, correlation %s)",
                             message.get_message_name(), message.get_message_id(), self.queue,
                             count + 1, message.get_correlation_id(),
                             extra=fields(self.queue, message, count + 1, outcome="handled"))
            return
        retry = self.policy.decide(outcome, count) is Decision.RETRY
        delay = self.policy.delay_ms(count) if retry and self.delayed else None
        self._log_failure(message, outcome, count, retry, delay)
        if self.host.observed:
            self.host.notify(ConsumerEvent("failed", self.queue, message, count, outcome,
                                           message.get_message_id()))
        if self.ordered:
            # The copy leaves this queue's order anyway: publish it (and ack the original once
            # it is confirmed) while the next deliveries run, not before them.
            task = asyncio.get_running_loop().create_task(
                self._forward_guarded(delivery, message, outcome, count, retry, delay))
            self.host.track(task)
            return
        await self._forward_and_notify(delivery, message, outcome, count, retry, delay)

    def _log_failure(self, message: Message, outcome: Outcome, count: int, retry: bool,
                     delay_ms: int | None = None) -> None:
        error = outcome.error_message[:500]
        if retry:
            self._retries += 1
            level, since = logging.INFO, ""
            now = time.monotonic()
            if now - self._warned_at >= _RETRY_WARNING_SECONDS:
                level, self._warned_at = logging.WARNING, now
                if self._retries > 1:
                    since = f" ({self._retries} retries on this queue since the last warning)"
                self._retries = 0
            if not logger.isEnabledFor(level):
                return
            options = self.host.options
            delay = (delay_ms if delay_ms is not None
                     else options.retry_ttl_ms if options is not None else None)
            logger.log(
                level, "%s %s failed on %s (attempt %d, correlation %s), retrying %s: %s: %s%s",
                message.get_message_name(), message.get_message_id(), self.queue, count + 1,
                message.get_correlation_id(),
                f"in {delay} ms" if delay is not None else "after the retry queue's delay",
                outcome.error_type, error, since,
                extra=fields(self.queue, message, count + 1, outcome="retried",
                             error_type=outcome.error_type, error=error, delay_ms=delay))
        else:
            logger.error(
                "%s %s failed on %s (attempt %d, correlation %s), dead-lettering: %s: %s",
                message.get_message_name(), message.get_message_id(), self.queue, count + 1,
                message.get_correlation_id(), outcome.error_type, error,
                extra=fields(self.queue, message, count + 1, outcome="dead_lettered",
                             error_type=outcome.error_type, error=error))

    async def _forward_and_notify(self, delivery: Delivery, message: Message, outcome: Outcome,
                                  count: int, retry: bool, delay_ms: int | None = None) -> None:
        retried = await self.forwarder.forward(delivery, outcome, count, retry, delay_ms=delay_ms)
        if self.host.observed:
            self.host.notify(ConsumerEvent("retried" if retried else "dead_lettered", self.queue,
                                           message, count, outcome, message.get_message_id()))

    async def _forward_guarded(self, delivery: Delivery, message: Message, outcome: Outcome,
                               count: int, retry: bool, delay_ms: int | None = None) -> None:
        try:
            await self._forward_and_notify(delivery, message, outcome, count, retry, delay_ms)
        except Exception as error:
            await self.recover(delivery, error)

    async def poison(self, delivery: Delivery, error: Exception, count: int) -> None:
        """Dead-letter a delivery that cannot be decoded (``error`` says why)."""
        if not isinstance(error, MessageDecodeError):
            error = MessageDecodeError(f"decoding failed: {type(error).__name__}: {error}")
        reason = str(error)[:500]
        logger.error("dead-lettering an undecodable message %s from %s (attempt %d, correlation "
                     "%s): %s", delivery.message_id, self.queue, count + 1,
                     delivery.correlation_id, reason,
                     extra=fields(self.queue, None, count + 1, message_id=delivery.message_id,
                                  correlation_id=delivery.correlation_id, outcome="poison",
                                  error_type=type(error).__name__, error=reason))
        outcome = outcome_of_exception(error)
        instruments = INSTRUMENTS.active
        processing = (instruments.processing(delivery, None, count + 1)
                      if instruments is not None else None)
        if processing is not None:
            processing.end(outcome, False)
        await self.forwarder.forward(delivery, outcome, count, retry=False)
        self.host.notify(ConsumerEvent("poison", self.queue, None, count, outcome,
                                            delivery.message_id))

    async def settle_suspect(self, delivery: Delivery, count: int) -> bool:
        """Settle a delivery whose copy a lost connection cut off, if this is one (True).

        It is not run again: the first time it comes back it is dead-lettered with a summary of
        its headers (a copy that cannot be too large for a frame); if even that is cut off, the
        broker dead-letters it itself the next time. No message makes a consumer reconnect
        over and over.
        """
        key = key_of(delivery)
        suspect = self.forwarder.suspects.get(key)
        if suspect is None:
            return False
        outcome, cut_off = suspect
        if cut_off >= 2:
            del self.forwarder.suspects[key]
            logger.error("a delivery from %s could not be settled twice (its copy was cut off "
                         "by a lost connection); dead-lettering it as it is", self.queue)
            await self.park(delivery, outcome)
        else:
            logger.error("a delivery from %s came back after its copy was cut off by a lost "
                         "connection; dead-lettering it with a summary of its headers", self.queue)
            await self.forwarder.forward(delivery, outcome, count, retry=False, keep_headers=False)
            self.forwarder.suspects.pop(key, None)
        self.host.notify(ConsumerEvent("dead_lettered", self.queue, None, count, outcome,
                                            delivery.message_id))
        return True


def unreadable(headers: Any) -> MessageDecodeError:
    """The error of a delivery whose AMQP properties could not be read."""
    reason = headers.get(UNREADABLE_PROPERTIES)
    return MessageDecodeError(f"the message's AMQP properties cannot be read ({reason}); "
                              "dead-lettered with its body only")
