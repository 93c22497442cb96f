"""OpenTelemetry for eventyard: spans and metrics through the global providers (extra ``otel``).

Only the API is used (``opentelemetry-api``); an application that sets up the SDK as the
global tracer and meter providers gets eventyard's spans and metrics without further code.
Until it does, nothing is recorded and no trace context is put in any message's headers.

Importing this module without the package raises ``ConfigurationError`` saying how to install
it; ``eventyard.observability`` imports it only when it is wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from eventyard.errors import ConfigurationError

try:
    from opentelemetry import context, metrics, propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as missing:  # the extra is not installed
    raise ConfigurationError(
        "OpenTelemetry is not installed: pip install 'eventyard[otel]' (opentelemetry-api), "
        f"or set EVENTYARD_OPENTELEMETRY=off ({missing})") from None

from eventyard.observability import header_text
from eventyard.telemetry import (
    DURATION_BUCKETS,
    ERROR_TYPE,
    MESSAGING_SYSTEM,
    SUBSCRIPTION,
)

if TYPE_CHECKING:
    from eventyard.ports import OutgoingMessage

SCOPE = "eventyard"


def _version() -> str:
    try:
        return version("eventyard")
    except PackageNotFoundError:
        return "0"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads trace context from AMQP headers (text, or bytes another client wrote)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = header_text(carrier, key)
        return [value] if value is not None else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [str(key) for key in carrier]


_GETTER = _HeaderGetter()


class _Span:
    """An OpenTelemetry span and the context it is current in."""

    __slots__ = ("context", "span")

    def __init__(self, span: OtelSpan, parent: context.Context | None) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span, parent)

    def enter(self) -> object:
        return context.attach(self.context)

    def leave(self, token: object) -> None:
        context.detach(token)  # type: ignore[arg-type]

    def finish(self, error_type: str | None, error: BaseException | None,
               attributes: Mapping[str, Any]) -> None:
        span = self.span
        if attributes:
            span.set_attributes(attributes)
        if error_type is not None:
            span.set_attribute(ERROR_TYPE, error_type)
            if error is not None:
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:500] if error else error_type))
        span.end()


class Tracing:
    """eventyard's tracer: ``send`` PRODUCER and ``process`` CONSUMER spans."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(SCOPE, _version(), tracer_provider=provider)
        self._ready = provider is not None

    def ready(self) -> bool:
        """True once a tracer provider is set (the global one, or one given)."""
        if not self._ready:
            self._ready = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        return self._ready

    def start_send(self, name: str, attributes: dict[str, Any],
                   messages: Sequence[OutgoingMessage]) -> _Span:
        """A PRODUCER span, child of the current context; its context goes in every message's
        headers (W3C ``traceparent``, ``tracestate``: the global propagator's fields)."""
        span = self._tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        started = _Span(span, None)
        inject = propagate.inject
        for message in messages:
            inject(message.headers, context=started.context)
        return started

    def start_process(self, name: str, attributes: dict[str, Any],
                      headers: Mapping[str, Any]) -> _Span:
        """A CONSUMER span, child of the producer's context that ``headers`` carry."""
        parent = propagate.extract(headers, getter=_GETTER) if headers else None
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER,
                                       attributes=attributes)
        return _Span(span, parent)


class Metrics:
    """eventyard's metrics through the global meter provider."""

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(SCOPE, _version(), meter_provider=provider)
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}",
            description="Messages eventyard published (confirmed, or failed: error.type).")
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}",
            description="Messages handed to handlers (or found undecodable: error.type).")
        self._duration = meter.create_histogram(
            "messaging.process.duration", unit="s",
            description="How long the handlers of one message ran.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self._ready = provider is not None
        self._retried = meter.create_counter(
            "eventyard.messages.retried", unit="{message}",
            description="Failed messages sent to their retry queue.")
        self._dead_lettered = meter.create_counter(
            "eventyard.messages.dead_lettered", unit="{message}",
            description="Messages sent to their dead-letter queue.")

    def ready(self) -> bool:
        """True once a meter provider is set (the global one, or one given)."""
        if not self._ready:
            # The API's default is a proxy that stands in until one is set; its class is
            # private, so it is known by name (another class: taken as set).
            provider = metrics.get_meter_provider()
            self._ready = type(provider).__name__ != "_ProxyMeterProvider"
        return self._ready

    def sent(self, attributes: Mapping[str, Any], count: int) -> None:
        """Count sent messages."""
        self._sent.add(count, attributes)

    def consumed(self, attributes: Mapping[str, Any], seconds: float) -> None:
        """Count a processed message and its duration."""
        self._consumed.add(1, attributes)
        self._duration.record(seconds, attributes)

    def settled(self, queue: str, error_type: str, retried: bool) -> None:
        """Count a retry or a dead letter."""
        counter = self._retried if retried else self._dead_lettered
        counter.add(1, {MESSAGING_SYSTEM: "rabbitmq", SUBSCRIPTION: queue,
                        ERROR_TYPE: error_type})


class OpenTelemetry:
    """The tracer and the metrics, as ``eventyard.telemetry.combine`` takes them: through the
    global providers, or through those given."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None) -> None:
        self.tracer = Tracing(tracer_provider)
        self.metrics = Metrics(meter_provider)
