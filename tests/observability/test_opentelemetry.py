"""OpenTelemetry: spans and metrics per the messaging semantic conventions for RabbitMQ, through
the SDK's in-memory exporters, on both brokers; trace context carried across a retry."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from contract.conftest import Yard
from eventyard import ConfigurationError, DomainEvent, MessageSubscriber
from eventyard.observability import INSTRUMENTS, instrument, use_opentelemetry
from observability.conftest import take


class Paid(DomainEvent):
    amount: int


class Receipted(DomainEvent):
    amount: int


@dataclass
class Recorded:
    """What the SDK recorded."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if kind is None or s.kind == kind]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of every data point of metric ``name``."""
        found = []
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


@pytest.fixture
def otel() -> Iterator[Recorded]:
    """The SDK with in-memory exporters, as eventyard's providers (the global ones stay unset:
    other tests must not find trace context in their headers)."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    use_opentelemetry(True, tracer_provider=tracer_provider,
                      meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        yield Recorded(spans, reader)
    finally:
        use_opentelemetry(None)


def _exchange(yard: Yard) -> str:
    return f"{yard.organization}.{yard.service}"


def _key(yard: Yard, name: str) -> str:
    return f"{yard.organization}.{yard.service}.1.event.{name}"


def test_a_send_span_per_publish_and_a_process_span_per_handler_run(yard: Yard,
                                                                    otel: Recorded) -> None:
    def on_paid(event: Paid) -> None:
        return None

    subscribers = [MessageSubscriber.from_message(Paid, [on_paid])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    event = Paid(amount=3)
    yard.event_bus().publish(event)
    yard.wait_until(lambda: len(otel.finished(SpanKind.CONSUMER)) == 1)

    [send] = otel.finished(SpanKind.PRODUCER)
    [process] = otel.finished(SpanKind.CONSUMER)
    destination = f"{_exchange(yard)}:{_key(yard, 'paid')}"
    queue = yard.queue_of(Paid, on_paid)
    assert send.name == f"send {destination}"
    assert dict(send.attributes or {}) == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": _key(yard, "paid"),
        "messaging.message.id": event.get_message_id(),
        "messaging.message.conversation_id": event.get_message_id(),
        "messaging.message.body.size": send.attributes["messaging.message.body.size"],  # type: ignore[index]
    }
    assert process.name == f"process {destination}:{queue}"
    attributes = dict(process.attributes or {})
    assert attributes.pop("messaging.message.body.size") > 0
    assert attributes == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": f"{destination}:{queue}",
        "messaging.destination.subscription.name": queue,
        "messaging.rabbitmq.destination.routing_key": _key(yard, "paid"),
        "messaging.message.id": event.get_message_id(),
        "messaging.message.conversation_id": event.get_message_id(),
        "eventyard.message.attempt": 1, "eventyard.message.outcome": "handled",
    }
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert process.status.status_code is StatusCode.UNSET


def test_the_trace_context_crosses_a_retry(yard: Yard, otel: Recorded) -> None:
    runs: list[int] = []

    def flaky(event: Paid) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("card declined")

    subscribers = [MessageSubscriber.from_message(Paid, [flaky])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=2)
    yard.event_bus().publish(Paid(amount=3))
    yard.wait_until(lambda: len(otel.finished(SpanKind.CONSUMER)) == 2)

    [send] = otel.finished(SpanKind.PRODUCER)
    first, second = otel.finished(SpanKind.CONSUMER)
    queue = yard.queue_of(Paid, flaky)
    for process in (first, second):
        assert process.parent is not None and process.parent.span_id == send.context.span_id
        assert process.context.trace_id == send.context.trace_id
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["error.type"], first.attributes["eventyard.message.attempt"],
            first.attributes["eventyard.message.outcome"]) == ("ValueError", 1, "retried")
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert "error.type" not in second.attributes
    assert (second.attributes["eventyard.message.attempt"],
            second.attributes["eventyard.message.outcome"]) == (2, "handled")
    # The retry comes back through the service's exchange under the key retry.Q.
    assert second.attributes["messaging.destination.name"] == (
        f"{_exchange(yard)}:retry.{queue}:{queue}")

    sent = otel.points("messaging.client.sent.messages")
    assert [(a["messaging.destination.name"], p.value) for a, p in sent] == [
        (f"{_exchange(yard)}:{_key(yard, 'paid')}", 1)]
    consumed = {a.get("error.type"): p.value for a, p in otel.points(
        "messaging.client.consumed.messages")}
    assert consumed == {"ValueError": 1, None: 1}
    durations = otel.points("messaging.process.duration")
    assert sum(p.count for _, p in durations) == 2
    assert all(a["messaging.destination.subscription.name"] == queue for a, _ in durations)
    assert [(a, p.value) for a, p in otel.points("eventyard.messages.retried")] == [
        ({"messaging.system": "rabbitmq", "messaging.destination.subscription.name": queue,
          "error.type": "ValueError"}, 1)]
    assert otel.points("eventyard.messages.dead_lettered") == []


def test_a_handler_s_publish_is_a_child_of_its_process_span(yard: Yard, otel: Recorded) -> None:
    bus = yard.event_bus()

    def on_paid(event: Paid) -> None:
        bus.publish([Receipted(amount=event.amount), Receipted(amount=-event.amount)])

    def on_receipted(event: Receipted) -> None:
        return None

    subscribers = [MessageSubscriber.from_message(Paid, [on_paid]),
                   MessageSubscriber.from_message(Receipted, [on_receipted])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    paid = Paid(amount=3)
    bus.publish(paid)
    yard.wait_until(lambda: len(otel.finished(SpanKind.CONSUMER)) == 3)

    sends = {s.name.split(":")[-1]: s for s in otel.finished(SpanKind.PRODUCER)}
    processes = otel.finished(SpanKind.CONSUMER)
    [paid_process] = [p for p in processes if p.attributes and
                      p.attributes["messaging.message.id"] == paid.get_message_id()]
    batch = sends[_key(yard, "receipted")]
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 2
    assert "messaging.message.id" not in batch.attributes
    assert batch.attributes["messaging.message.conversation_id"] == paid.get_message_id()
    assert batch.parent is not None and batch.parent.span_id == paid_process.context.span_id
    receipts = [p for p in processes if p is not paid_process]
    assert all(p.parent is not None and p.parent.span_id == batch.context.span_id for p in receipts)
    assert {p.context.trace_id for p in [*processes, batch]} == {paid_process.context.trace_id}


def test_dead_letters_and_poison_are_spans_and_counts(yard: Yard, otel: Recorded) -> None:
    def refuse(event: Paid) -> None:
        raise KeyError("no")

    subscribers = [MessageSubscriber.from_message(Paid, [refuse])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=0)
    yard.event_bus().publish(Paid(amount=1))
    yard.publish_raw(_key(yard, "paid"), b'{"data": {"type": "paid"}}')
    yard.wait_until(lambda: len(otel.finished(SpanKind.CONSUMER)) == 2)

    outcomes = sorted((s.attributes or {}).get("error.type", "") for s in
                      otel.finished(SpanKind.CONSUMER))
    assert outcomes == ["KeyError", "MessageDecodeError"]
    assert all((s.attributes or {})["eventyard.message.outcome"] == "dead_lettered"
               for s in otel.finished(SpanKind.CONSUMER))
    yard.wait_until(lambda: sum(p.value for _, p in otel.points(
        "eventyard.messages.dead_lettered")) == 2)
    assert sorted(a["error.type"] for a, _ in otel.points("eventyard.messages.dead_lettered")) == [
        "KeyError", "MessageDecodeError"]


def test_the_w3c_trace_context_travels_in_the_headers(yard: Yard, otel: Recorded) -> None:
    def not_started(event: Paid) -> None:
        raise AssertionError("nobody consumes this queue")

    yard.configure([MessageSubscriber.from_message(Paid, [not_started])])
    yard.event_bus().publish(Paid(amount=1))
    [taken] = take(yard, yard.queue_of(Paid, not_started))

    [send] = otel.finished(SpanKind.PRODUCER)
    assert taken.headers["traceparent"] == (
        f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}-"
        f"{int(send.context.trace_flags):02x}")


def test_turned_off_there_are_no_spans_and_no_headers(yard: Yard, otel: Recorded) -> None:
    use_opentelemetry(False)

    def not_started(event: Paid) -> None:
        raise AssertionError("nobody consumes this queue")

    yard.configure([MessageSubscriber.from_message(Paid, [not_started])])
    yard.event_bus().publish(Paid(amount=1))
    [taken] = take(yard, yard.queue_of(Paid, not_started))

    assert INSTRUMENTS.active is None
    assert taken.headers == {} and otel.finished() == []


def test_without_an_sdk_set_up_nothing_is_recorded_or_sent(memory_yard: Yard) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    use_opentelemetry(None)

    def not_started(event: Paid) -> None:
        raise AssertionError("nobody consumes this queue")

    memory_yard.configure([MessageSubscriber.from_message(Paid, [not_started])])
    memory_yard.event_bus().publish(Paid(amount=1))
    [taken] = take(memory_yard, memory_yard.queue_of(Paid, not_started))

    assert INSTRUMENTS.active is not None  # the API is installed: ready for an SDK
    assert taken.headers == {}


def test_without_the_package_asking_for_it_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "eventyard.otel", raising=False)
    try:
        with pytest.raises(ConfigurationError, match=r"pip install 'eventyard\[otel\]'"):
            use_opentelemetry(True)
        monkeypatch.setenv("EVENTYARD_OPENTELEMETRY", "on")
        with pytest.raises(ConfigurationError, match="OpenTelemetry is not installed"):
            use_opentelemetry(None)
        monkeypatch.setenv("EVENTYARD_OPENTELEMETRY", "auto")
        use_opentelemetry(None)
        assert INSTRUMENTS.active is None  # by default, silently without
        monkeypatch.setenv("EVENTYARD_OPENTELEMETRY", "sometimes")
        with pytest.raises(ConfigurationError, match="is not auto, on or off"):
            use_opentelemetry(None)
    finally:
        monkeypatch.undo()
        use_opentelemetry(None)
    assert instrument() is not None
