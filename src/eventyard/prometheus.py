"""Prometheus exposition of eventyard's metrics (extra ``prometheus``: prometheus-client).

The counters and histogram are OpenTelemetry's, named as its Prometheus exporter names them
(dots become underscores, counters end in ``_total``, the duration in ``_seconds``), with the
attributes as labels (``error_type`` empty on success):

- ``messaging_client_sent_messages_total``
- ``messaging_client_consumed_messages_total``
- ``messaging_process_duration_seconds`` (histogram)
- ``eventyard_messages_retried_total`` and ``eventyard_messages_dead_lettered_total``, per queue

``serve_metrics(port)`` serves them over HTTP for scraping (``eventyard consume
--metrics-port``); ``enable_prometheus()`` only records them, in the default registry (or the
one given), for a process that serves its registry itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from eventyard.errors import ConfigurationError

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
except ImportError as missing:
    raise ConfigurationError(
        "prometheus-client is not installed: pip install 'eventyard[prometheus]' "
        f"({missing})") from None

from eventyard.observability import add_metric_sink, remove_metric_sink
from eventyard.telemetry import (
    DESTINATION,
    DURATION_BUCKETS,
    ERROR_TYPE,
    MESSAGING_SYSTEM,
    OPERATION_NAME,
    SUBSCRIPTION,
)

_SENT = (MESSAGING_SYSTEM, OPERATION_NAME, DESTINATION, ERROR_TYPE)
_CONSUMED = (*_SENT, SUBSCRIPTION)
_SETTLED = (MESSAGING_SYSTEM, SUBSCRIPTION, ERROR_TYPE)


def _labels(names: tuple[str, ...]) -> list[str]:
    return [name.replace(".", "_") for name in names]


class PrometheusMetrics:
    """eventyard's metrics in a Prometheus registry (a metric sink of the instruments)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._sent = Counter("messaging_client_sent_messages",
                             "Messages eventyard published (confirmed, or failed: error_type).",
                             _labels(_SENT), registry=registry)
        self._consumed = Counter("messaging_client_consumed_messages",
                                 "Messages handed to handlers (or undecodable: error_type).",
                                 _labels(_CONSUMED), registry=registry)
        self._duration = Histogram("messaging_process_duration_seconds",
                                   "How long the handlers of one message ran.",
                                   _labels(_CONSUMED), registry=registry, buckets=DURATION_BUCKETS)
        self._retried = Counter("eventyard_messages_retried",
                                "Failed messages sent to their retry queue.",
                                _labels(_SETTLED), registry=registry)
        self._dead_lettered = Counter("eventyard_messages_dead_lettered",
                                      "Messages sent to their dead-letter queue.",
                                      _labels(_SETTLED), registry=registry)

    def ready(self) -> bool:
        """Always: the registry is there."""
        return True

    def sent(self, attributes: Mapping[str, Any], count: int) -> None:
        """Count sent messages."""
        self._sent.labels(*(str(attributes.get(n, "")) for n in _SENT)).inc(count)

    def consumed(self, attributes: Mapping[str, Any], seconds: float) -> None:
        """Count a processed message and observe its duration."""
        values = [str(attributes.get(n, "")) for n in _CONSUMED]
        self._consumed.labels(*values).inc()
        self._duration.labels(*values).observe(seconds)

    def settled(self, queue: str, error_type: str, retried: bool) -> None:
        """Count a retry or a dead letter of ``queue``."""
        counter = self._retried if retried else self._dead_lettered
        counter.labels("rabbitmq", queue, error_type).inc()


_lock = threading.Lock()
_sinks: dict[int, PrometheusMetrics] = {}


def enable_prometheus(registry: CollectorRegistry | None = None) -> PrometheusMetrics:
    """Record eventyard's metrics in ``registry`` (default: prometheus-client's global one);
    idempotent."""
    registry = registry if registry is not None else prometheus_client.REGISTRY
    with _lock:
        sink = _sinks.get(id(registry))
        if sink is None or sink.registry is not registry:
            sink = _sinks[id(registry)] = PrometheusMetrics(registry)
    add_metric_sink(sink)
    return sink


def disable_prometheus(registry: CollectorRegistry | None = None) -> None:
    """Stop recording eventyard's metrics in ``registry`` (they stay registered there)."""
    registry = registry if registry is not None else prometheus_client.REGISTRY
    with _lock:
        sink = _sinks.get(id(registry))
    if sink is not None:
        remove_metric_sink(sink)


def serve_metrics(port: int, addr: str = "0.0.0.0",
                  registry: CollectorRegistry | None = None) -> Any:
    """Record eventyard's metrics and serve ``registry`` on ``http://addr:port/metrics`` from a
    daemon thread; return the server (``shutdown()`` stops it). Port 0 picks a free one
    (``server.server_port``). ``ConfigurationError`` when the port cannot be taken."""
    registry = registry if registry is not None else prometheus_client.REGISTRY
    enable_prometheus(registry)
    try:
        server, _ = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port}: {error.strerror or error}") from None
    return server
