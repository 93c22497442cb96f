"""The instruments behind ``eventyard.observability``: spans and metrics of sends and handler runs.

``Instrumentation`` turns what buses and consumers report into the names of the messaging
semantic conventions for RabbitMQ (destination names, span names, attributes) and hands them to
a tracer (OpenTelemetry's, when its SDK is set up) and to metric sinks (OpenTelemetry's meter,
Prometheus). It imports no instrumentation library itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from eventyard.observability import Instruments

if TYPE_CHECKING:
    from eventyard.messages import Message
    from eventyard.ports import Delivery, OutgoingMessage
    from eventyard.subscribers import Outcome

SYSTEM = "rabbitmq"
# Attribute names of the messaging semantic conventions (and eventyard's own, namespaced).
MESSAGING_SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
SUBSCRIPTION = "messaging.destination.subscription.name"
ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BATCH_COUNT = "messaging.batch.message_count"
BODY_SIZE = "messaging.message.body.size"
ERROR_TYPE = "error.type"
ATTEMPT = "eventyard.message.attempt"
OUTCOME = "eventyard.message.outcome"
# The bucket boundaries the semantic conventions advise for messaging durations (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0)


class Span(Protocol):
    """A span as ``Instrumentation`` drives it."""

    def enter(self) -> object:
        """Make the span current here; a token for ``leave``."""

    def leave(self, token: object) -> None:
        """Undo ``enter``."""

    def finish(self, error_type: str | None, error: BaseException | None,
               attributes: Mapping[str, Any]) -> None:
        """Set ``attributes`` and the error, if any, and end the span."""


class Tracer(Protocol):
    """Starts spans (OpenTelemetry's, in ``eventyard.otel``)."""

    def ready(self) -> bool:
        """True once spans go somewhere (an SDK is set up)."""

    def start_send(self, name: str, attributes: dict[str, Any],
                   messages: Sequence[OutgoingMessage]) -> Span:
        """Start a PRODUCER span and put its context in every message's headers."""

    def start_process(self, name: str, attributes: dict[str, Any],
                      headers: Mapping[str, Any]) -> Span:
        """Start a CONSUMER span, a child of the context ``headers`` carry."""


class MetricSink(Protocol):
    """Where the counters and histograms go (OpenTelemetry's meter, Prometheus)."""

    def ready(self) -> bool:
        """True once the metrics go somewhere."""

    def sent(self, attributes: Mapping[str, Any], count: int) -> None:
        """``count`` messages were sent (or failed to be: ``error.type``)."""

    def consumed(self, attributes: Mapping[str, Any], seconds: float) -> None:
        """One message was processed in ``seconds``."""

    def settled(self, queue: str, error_type: str, retried: bool) -> None:
        """A failed message of ``queue`` was retried or dead-lettered."""


def send_destination(exchange: str, routing_key: str) -> str:
    """``messaging.destination.name`` of a send: ``{exchange}:{routing key}``."""
    if exchange and routing_key:
        return f"{exchange}:{routing_key}"
    return exchange or routing_key or "amq.default"


def process_destination(exchange: str, routing_key: str, queue: str) -> str:
    """``messaging.destination.name`` of a delivery: ``{exchange}:{routing key}:{queue}``
    (empty parts left out, the queue once when the routing key is its name)."""
    parts = [part for part in (exchange, routing_key) if part]
    if queue and queue != routing_key:
        parts.append(queue)
    return ":".join(parts) or "amq.default"


class _Send:
    __slots__ = ("attributes", "destinations", "sinks", "span")

    def __init__(self, span: Span | None, sinks: list[MetricSink], attributes: dict[str, Any],
                 destinations: Counter[str]) -> None:
        self.span, self.sinks, self.attributes, self.destinations = (span, sinks, attributes,
                                                                      destinations)

    def end(self, error: BaseException | None) -> None:
        error_type = type(error).__qualname__ if error is not None else None
        if self.span is not None:
            self.span.finish(error_type, error, {})
        for destination, count in self.destinations.items():
            attributes = {MESSAGING_SYSTEM: SYSTEM, OPERATION_NAME: "send",
                          DESTINATION: destination}
            if error_type is not None:
                attributes[ERROR_TYPE] = error_type
            for sink in self.sinks:
                sink.sent(attributes, count)


class _Process:
    __slots__ = ("metric_attributes", "queue", "sinks", "span", "start")

    def __init__(self, span: Span | None, sinks: list[MetricSink],
                 metric_attributes: dict[str, Any], queue: str) -> None:
        self.span, self.sinks, self.metric_attributes, self.queue = (span, sinks,
                                                                     metric_attributes, queue)
        self.start = time.perf_counter()

    def enter(self) -> object:
        return self.span.enter() if self.span is not None else None

    def leave(self, token: object) -> None:
        if self.span is not None:
            self.span.leave(token)

    def end(self, outcome: Outcome, retried: bool | None) -> None:
        seconds = time.perf_counter() - self.start
        error_type = None if outcome.success else (outcome.error_type or "_OTHER")
        if self.span is not None:
            result = ("handled" if retried is None else "retried" if retried
                      else "dead_lettered")
            self.span.finish(error_type, outcome.exception, {OUTCOME: result})
        attributes = self.metric_attributes
        if error_type is not None:
            attributes = {**attributes, ERROR_TYPE: error_type}
        for sink in self.sinks:
            sink.consumed(attributes, seconds)


class Instrumentation(Instruments):
    """Spans from ``tracer`` and metrics into ``sinks``, each once it is ready.

    Until all of them are ready (an SDK set up), whether they are is looked at again at most
    every ``RECHECK_SECONDS``: an application with the API installed and no SDK pays a clock
    read per message, and one that sets up its SDK late misses at most that much.
    """

    RECHECK_SECONDS = 0.5

    def __init__(self, tracer: Tracer | None, sinks: Sequence[MetricSink]) -> None:
        self.tracer = tracer
        self.sinks = list(sinks)
        self._live_tracer: Tracer | None = None
        self._live_sinks: list[MetricSink] = []
        self._all_ready = False
        self._next_check = 0.0

    def _live(self) -> tuple[Tracer | None, list[MetricSink]]:
        if not self._all_ready:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + self.RECHECK_SECONDS
                tracer = self.tracer
                self._live_tracer = tracer if tracer is not None and tracer.ready() else None
                self._live_sinks = [sink for sink in self.sinks if sink.ready()]
                self._all_ready = ((tracer is None or self._live_tracer is not None)
                                   and len(self._live_sinks) == len(self.sinks))
        return self._live_tracer, self._live_sinks

    def sending(self, messages: Sequence[OutgoingMessage]) -> _Send | None:
        """Start the ``send`` of ``messages``: one span for the publish, a batch or not."""
        tracer, sinks = self._live()
        if (tracer is None and not sinks) or not messages:
            return None
        destinations = Counter(send_destination(m.exchange, m.routing_key) for m in messages)
        span = None
        if tracer is not None:
            first = messages[0]
            single = len(messages) == 1
            destination = (next(iter(destinations)) if len(destinations) == 1
                           else first.exchange or "amq.default")
            attributes: dict[str, Any] = {MESSAGING_SYSTEM: SYSTEM, OPERATION_NAME: "send",
                                          OPERATION_TYPE: "send", DESTINATION: destination}
            if single:
                if first.routing_key:
                    attributes[ROUTING_KEY] = first.routing_key
                if first.message_id:
                    attributes[MESSAGE_ID] = first.message_id
                attributes[BODY_SIZE] = len(first.body)
            else:
                attributes[BATCH_COUNT] = len(messages)
            conversations = {m.correlation_id for m in messages}
            if len(conversations) == 1 and first.correlation_id:
                attributes[CONVERSATION_ID] = first.correlation_id
            span = tracer.start_send(f"send {destination}", attributes, messages)
        return _Send(span, sinks, {}, destinations)

    def processing(self, delivery: Delivery, message: Message | None,
                   attempt: int) -> _Process | None:
        """Start the ``process`` of ``delivery``: one span per handler run."""
        tracer, sinks = self._live()
        if tracer is None and not sinks:
            return None
        queue = delivery.queue
        destination = process_destination(delivery.exchange, delivery.routing_key, queue)
        metric_attributes = {MESSAGING_SYSTEM: SYSTEM, OPERATION_NAME: "process",
                             DESTINATION: destination, SUBSCRIPTION: queue}
        span = None
        if tracer is not None:
            attributes: dict[str, Any] = {**metric_attributes, OPERATION_TYPE: "process",
                                          ATTEMPT: attempt}
            if delivery.routing_key:
                attributes[ROUTING_KEY] = delivery.routing_key
            message_id = message.get_message_id() if message is not None else delivery.message_id
            if message_id:
                attributes[MESSAGE_ID] = message_id
            conversation = (message.get_correlation_id() if message is not None
                            else delivery.correlation_id)
            if conversation:
                attributes[CONVERSATION_ID] = conversation
            attributes[BODY_SIZE] = len(delivery.body)
            span = tracer.start_process(f"process {destination}", attributes, delivery.headers)
        return _Process(span, sinks, metric_attributes, queue)

    def settled(self, queue: str, error_type: str, retried: bool) -> None:
        """Count a retry or a dead letter of ``queue``."""
        for sink in self._live()[1]:
            sink.settled(queue, error_type or "_OTHER", retried)


def combine(opentelemetry: Any, sinks: Sequence[MetricSink]) -> Instruments | None:
    """The instruments of ``opentelemetry`` (an ``eventyard.otel.OpenTelemetry``, or None) and
    of further metric sinks; None when there are none (the hot paths then do nothing)."""
    tracer = opentelemetry.tracer if opentelemetry is not None else None
    all_sinks = ([opentelemetry.metrics] if opentelemetry is not None else []) + list(sinks)
    if tracer is None and not all_sinks:
        return None
    return Instrumentation(tracer, all_sinks)
