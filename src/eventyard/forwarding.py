"""Forwarding: the copy of a failed message sent to its retry, delay or dead-letter queue.

A copy's headers always fit the connection's frame. A delivery whose copy a lost connection cut
off is remembered (a suspect) so that it is dead-lettered, not run again, when it comes back.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from eventyard import naming
from eventyard.errors import BrokerConnectionError, ConfigurationError
from eventyard.headers import encodable, header_budget
from eventyard.observability import INSTRUMENTS
from eventyard.ports import Delivery, OutgoingMessage, Transport, frame_max_of
from eventyard.retry import (
    DELAY_LEFT,
    FAILURE_HEADERS_DROPPED,
    delay_hop,
    delay_left,
    failure_headers,
)
from eventyard.subscribers import Outcome
from eventyard.topology import Route

# The consumer's logs keep the one logger name that docs/observability.md documents.
logger = logging.getLogger("eventyard.consuming")

# Deliveries whose copy a lost connection cut off, remembered until they come back (at most).
_SUSPECTS_LIMIT = 1024
_DELAY_ROOM = 64  # bytes of a delayed copy's headers kept for its DELAY_LEFT


class TransportHolder(Protocol):
    """What forwarding needs of its consumer: the transport it is consuming on."""

    @property
    def transport(self) -> Transport | None:
        """The consumer's transport (None when it is not running)."""
        ...


class Forwarder:
    """Publishes the copies of one queue's failed messages, then acks their originals."""

    def __init__(self, host: TransportHolder, queue: str, route: Route) -> None:
        self.host = host
        self.queue = queue
        self.route = route
        # Deliveries whose copy a lost connection cut off: (outcome, times cut off) by key.
        self.suspects: dict[tuple[Any, ...], tuple[Outcome, int]] = {}

    async def forward(self, delivery: Delivery, outcome: Outcome, count: int, retry: bool, *,
                      keep_headers: bool = True, delay_ms: int | None = None) -> bool:
        """Publish the failed message's copy (retry or dead letter), then ack the original.

        Return True if it went to the retry queue: a message whose headers had to be cut down
        to fit a frame is dead-lettered even with retries left. A retry with ``delay_ms`` (a
        policy with delays of its own) goes through the delay ladder.
        """
        transport = self.host.transport
        assert transport is not None
        delay_ms = delay_ms if retry else None
        headers = failure_headers(delivery.headers, outcome, queue=self.queue,
                                  routing_key=delivery.routing_key,
                                  retries=count + 1 if retry else count,
                                  limit=header_budget(frame_max_of(transport)) - (
                                      _DELAY_ROOM if delay_ms is not None else 0),
                                  keep_headers=keep_headers, delay_ms=delay_ms)
        if retry and FAILURE_HEADERS_DROPPED in headers:
            logger.error("a message from %s has headers too large to retry it with its failure; "
                         "dead-lettering it with a summary of them", self.queue)
            retry = False
            headers = failure_headers(delivery.headers, outcome, queue=self.queue,
                                      routing_key=delivery.routing_key, retries=count,
                                      limit=header_budget(frame_max_of(transport)),
                                      keep_headers=False)
        route = self.route
        exchange, key = ((route.retry_exchange, route.retry_key) if retry
                         else (route.dead_letter_exchange, route.dead_letter_key))
        if retry and delay_ms is not None:
            exchange, key = self._delay_route(headers, delay_ms)
        copy = OutgoingMessage(
            exchange=exchange,
            routing_key=key,
            body=delivery.body,
            headers=headers,
            message_id=delivery.message_id,
            type=delivery.type,
            timestamp=delivery.timestamp,
            correlation_id=delivery.correlation_id,
        )
        try:
            unroutable = await transport.publish([copy])
        except BrokerConnectionError:
            self._suspect(delivery, outcome)
            raise
        if unroutable:
            raise ConfigurationError(
                f"{copy.exchange} routed {copy.routing_key} to no queue: the topology of "
                f"{self.queue} is missing; run the configurer (message left unacked)"
            )
        await delivery.ack()
        instruments = INSTRUMENTS.active
        if instruments is not None:
            instruments.settled(self.queue, outcome.error_type, retry)
        return retry

    def _delay_route(self, headers: dict[str, Any], left_ms: int) -> tuple[str, str]:
        """Where a copy that must wait ``left_ms`` more goes: the ladder level to wait next
        (what remains after it in ``headers``), or straight back to the queue."""
        hop = delay_hop(left_ms)
        if hop is None:
            headers.pop(DELAY_LEFT, None)
            return self.route.main_exchange, self.route.retry_key
        level, rest = hop
        if rest:
            headers[DELAY_LEFT] = rest
        else:
            headers.pop(DELAY_LEFT, None)
        return self.route.delay_exchange, naming.delay_key(level, self.queue)

    async def wait_more(self, delivery: Delivery) -> bool:
        """Send a delayed copy that came back before its delay is over to its next ladder
        level (confirmed, then acked; its handlers do not run). False if it is due."""
        left = delay_left(delivery.headers)
        if left <= 0:
            return False
        transport = self.host.transport
        assert transport is not None
        headers = encodable(delivery.headers)
        exchange, key = self._delay_route(headers, left)
        copy = OutgoingMessage(exchange=exchange, routing_key=key, body=delivery.body,
                               headers=headers, message_id=delivery.message_id,
                               type=delivery.type, timestamp=delivery.timestamp,
                               correlation_id=delivery.correlation_id)
        if await transport.publish([copy]):
            raise ConfigurationError(
                f"{exchange} routed {key} to no queue: the delay ladder of {self.queue} is "
                "missing; run the configurer (message left unacked)")
        await delivery.ack()
        return True

    def _suspect(self, delivery: Delivery, outcome: Outcome) -> None:
        key = key_of(delivery)
        previous = self.suspects.pop(key, None)
        if len(self.suspects) >= _SUSPECTS_LIMIT:
            del self.suspects[next(iter(self.suspects))]  # the oldest: long gone, most likely
        self.suspects[key] = (outcome, previous[1] + 1 if previous is not None else 1)


def key_of(delivery: Delivery) -> tuple[Any, ...]:
    """What tells a delivery from others when it comes back (it has no identity of its own)."""
    body = delivery.body
    return (delivery.message_id, delivery.routing_key, len(body), hash(body))
