"""Prometheus: the same counters and histogram, scraped over HTTP (library and CLI)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cli.cliapp import UserCreated
from cli.conftest import EVENTYARD, ROOT, TIMEOUT, Service, wait_until
from contract.conftest import Yard
from eventyard import ConfigurationError, DomainEvent, MessageSubscriber, Uuid
from eventyard.prometheus import disable_prometheus, serve_metrics
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus
from observability.conftest import Lines


class Counted(DomainEvent):
    n: int


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``http://127.0.0.1:port/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, found), v in samples.items()
               if n == name and set(labels.items()) <= set(found))


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A registry of this test's own, served on a free port of the loopback."""
    registry = CollectorRegistry()
    yield registry
    disable_prometheus(registry)


def test_the_metrics_are_served_for_scraping(memory_yard: Yard,
                                             registry: CollectorRegistry) -> None:
    server = serve_metrics(0, "127.0.0.1", registry)
    try:
        def count(event: Counted) -> None:
            if event.n == 0:
                raise ValueError("zero")

        subscribers = [MessageSubscriber.from_message(Counted, [count])]
        memory_yard.configure(subscribers)
        memory_yard.consumer(subscribers, max_retries=1)
        memory_yard.event_bus().publish([Counted(n=0), Counted(n=1), Counted(n=2)])
        memory_yard.wait_until(lambda: len(memory_yard.recorder.events("dead_lettered")) == 1)
        samples = scrape(server.server_port)
    finally:
        server.shutdown()

    queue = memory_yard.queue_of(Counted, count)
    exchange = f"{memory_yard.organization}.{memory_yard.service}"
    key = f"{exchange}.1.event.counted"
    assert value(samples, "messaging_client_sent_messages_total",
                 messaging_destination_name=f"{exchange}:{key}", error_type="") == 3
    consumed = "messaging_client_consumed_messages_total"
    assert value(samples, consumed, messaging_destination_subscription_name=queue,
                 error_type="") == 2
    assert value(samples, consumed, messaging_destination_subscription_name=queue,
                 error_type="ValueError") == 2
    assert value(samples, "messaging_process_duration_seconds_count",
                 messaging_destination_subscription_name=queue) == 4
    assert value(samples, "messaging_process_duration_seconds_bucket", le="+Inf") == 4
    assert value(samples, "eventyard_messages_retried_total",
                 messaging_destination_subscription_name=queue, error_type="ValueError") == 1
    assert value(samples, "eventyard_messages_dead_lettered_total",
                 messaging_destination_subscription_name=queue, error_type="ValueError") == 1


def test_a_port_in_use_is_a_clear_error(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+"):
            serve_metrics(taken.getsockname()[1], "127.0.0.1", registry)


def test_without_the_package_enabling_it_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "eventyard.prometheus")
    with pytest.raises(ConfigurationError, match=r"pip install 'eventyard\[prometheus\]'"):
        import eventyard.prometheus  # noqa: F401


@pytest.mark.rabbitmq
def test_eventyard_consume_serves_metrics_on_the_port_given(service: Service) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(EVENTYARD), "consume", "cli.cliapp:subscribers", "-o", service.org, "-s",
         "registration", "--store-queue", f"store.{service.org}", "--metrics-port", str(port),
         "--metrics-addr", "127.0.0.1"],
        env=service.env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        lines = Lines(process.stderr)
        wait_until(lambda: any("consuming" in line for line in lines.lines), "the consumer")
        assert any(f"serving metrics on http://127.0.0.1:{port}/metrics" in line
                   for line in lines.lines)
        connector = RabbitMqConnector(service.url)
        try:
            RabbitMqDomainEventBus(connector, service.org, "registration").publish(
                UserCreated(user_id=Uuid.v4()))
        finally:
            connector.close()
        wait_until(lambda: value(scrape(port), "messaging_client_consumed_messages_total",
                                 messaging_destination_subscription_name=service.queue) == 1,
                   "the consumed message's count")
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        process.kill()
        process.wait(TIMEOUT)
