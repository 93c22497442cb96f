"""The chaos policy: settings from arguments or the seed's variables, validation, seeding."""

from __future__ import annotations

import pytest

from eventyard import ChaosConfigurationError, EventChaos
from eventyard.chaos import (
    ENV_DELAY,
    ENV_FAILURES,
    ENV_NACK,
    ENV_PROTECTED,
    ENV_SEED,
    NO_CHAOS,
    ConnectionDrops,
)
from eventyard.rabbitmq import RabbitMqEventChaos
from eventyard.retry import FAILURE_ROUTING_KEY

KEY = "acme.registration.1.event.user_created"
QUEUE = f"{KEY}.send_mail_handler"


def decisions(chaos: EventChaos, n: int = 2000) -> list[tuple[bool, float, bool]]:
    return [(a.nack, a.delay_seconds, a.fail) for a in (chaos.decide(KEY, QUEUE) for _ in range(n))]


def test_off_unless_configured() -> None:
    chaos = EventChaos(environ={})
    assert not chaos.is_active()
    assert all(chaos.decide(KEY, QUEUE) is NO_CHAOS for _ in range(100))


def test_arguments_set_each_setting() -> None:
    chaos = EventChaos(0.25, 0.5, 0.75, ["a.b"], environ={})
    assert chaos.percentage_simulate_nack == 0.25
    assert chaos.delay_before_even_handler_second == 0.5
    assert chaos.percentage_simulate_failures == 0.75
    assert chaos.protected_routing_keys == frozenset({"a.b"})
    assert chaos.is_active()


def test_environment_sets_each_setting() -> None:
    env = {ENV_NACK: "0.1", ENV_DELAY: "2", ENV_FAILURES: "0.3",
           ENV_PROTECTED: "dead_letter.store, dl-legacy ,", ENV_SEED: "7"}
    chaos = EventChaos(environ=env)
    assert chaos.percentage_simulate_nack == 0.1
    assert chaos.delay_before_even_handler_second == 2.0
    assert chaos.percentage_simulate_failures == 0.3
    assert chaos.protected_routing_keys == frozenset({"dead_letter.store", "dl-legacy"})
    assert decisions(chaos) == decisions(EventChaos(environ=env))


def test_arguments_win_over_environment() -> None:
    env = {ENV_NACK: "0.9", ENV_FAILURES: "0.9", ENV_PROTECTED: "x"}
    chaos = EventChaos(percentage_simulate_nack=0.0, percentage_simulate_failures=0.1,
                       protected_routing_keys=[], environ=env)
    assert chaos.percentage_simulate_nack == 0.0
    assert chaos.percentage_simulate_failures == 0.1
    assert chaos.protected_routing_keys == frozenset()


def test_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_NACK, "0.4")
    assert RabbitMqEventChaos().percentage_simulate_nack == 0.4


@pytest.mark.parametrize("name, kwargs", [
    ("percentage_simulate_nack", {"percentage_simulate_nack": 1.5}),
    ("percentage_simulate_failures", {"percentage_simulate_failures": -0.1}),
    ("delay_before_even_handler_second", {"delay_before_even_handler_second": -1}),
])
def test_out_of_range_arguments_name_the_argument(name: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ChaosConfigurationError, match=name):
        EventChaos(**kwargs, environ={})  # type: ignore[arg-type]


@pytest.mark.parametrize("variable, value", [
    (ENV_NACK, "1.01"), (ENV_NACK, "lots"), (ENV_FAILURES, "-0.5"), (ENV_DELAY, "-3"),
    (ENV_DELAY, "soon"), (ENV_SEED, "abc"),
])
def test_bad_environment_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ChaosConfigurationError, match=variable):
        EventChaos(environ={variable: value})


def test_protected_keys_must_be_a_list() -> None:
    with pytest.raises(ChaosConfigurationError):
        EventChaos(protected_routing_keys="a,b", environ={})


def test_same_seed_same_decisions_and_rates_follow_the_settings() -> None:
    first = decisions(EventChaos(0.2, 0.0, 0.3, seed=42, environ={}))
    assert first == decisions(EventChaos(0.2, 0.0, 0.3, seed=42, environ={}))
    assert first != decisions(EventChaos(0.2, 0.0, 0.3, seed=43, environ={}))
    nacks = sum(nack for nack, _, _ in first) / len(first)
    fails = sum(fail for _, _, fail in first) / sum(not nack for nack, _, _ in first)
    assert 0.15 < nacks < 0.25
    assert 0.25 < fails < 0.35


def test_full_rates_and_delay() -> None:
    assert all(nack for nack, _, _ in decisions(EventChaos(1.0, environ={}), 50))
    assert all(fail and delay == 0.5
               for _, delay, fail in decisions(EventChaos(0.0, 0.5, 1.0, environ={}), 50))


def test_protected_routing_keys_and_queues_see_no_chaos() -> None:
    chaos = EventChaos(1.0, 1.0, 1.0, [KEY, "store"], environ={})
    assert chaos.decide(KEY, QUEUE) is NO_CHAOS
    assert chaos.decide("acme.other.1.event.x", "store") is NO_CHAOS
    assert chaos.decide("acme.other.1.event.x", "acme.other.1.event.x.h").nack


def test_protection_follows_a_retried_message() -> None:
    chaos = EventChaos(1.0, 0.0, 1.0, [KEY], environ={})
    retry_key = f"retry.{QUEUE}"
    assert chaos.decide(retry_key, QUEUE, {FAILURE_ROUTING_KEY: KEY}) is NO_CHAOS
    assert chaos.decide(retry_key, QUEUE, {FAILURE_ROUTING_KEY: KEY.encode()}) is NO_CHAOS
    assert chaos.decide(retry_key, QUEUE, {FAILURE_ROUTING_KEY: "other"}).nack
    assert chaos.decide(retry_key, QUEUE).nack


def test_connection_drops_are_spread_and_fire_once_each() -> None:
    drops = ConnectionDrops(3, 1000, seed=1)
    assert len(drops.points) == 3
    assert all(0 < point < 1000 for point in drops.points)
    assert drops.points == ConnectionDrops(3, 1000, seed=1).points
    fired = [seen for seen in range(1001) if drops.due(seen)]
    assert fired == drops.points
    assert drops.remaining == 0
    assert not drops.due(5000)


def test_connection_drops_none_or_invalid() -> None:
    assert ConnectionDrops(0, 100).points == []
    assert ConnectionDrops(2, 0).points == []
    with pytest.raises(ChaosConfigurationError, match="drops"):
        ConnectionDrops(-1, 100)


def test_soak_on_the_memory_broker_loses_nothing() -> None:
    from eventyard.memory import MemoryBroker
    from eventyard.soak import run_soak

    with MemoryBroker() as broker:
        report = run_soak(broker, events=300, subscribers=3, nack=0.2, failure=0.25, drops=2,
                          seed=2, max_retries=2, retry_ttl_ms=20, timeout=60)
    assert report.ok and report.quiet and report.lost == 0
    assert report.drops_done == 2
    for sub in report.subscribers:
        assert sub.handled + sub.dead_lettered - sub.handled_and_dead_lettered == sub.published
        assert sub.lost == sub.pending == sub.unexpected == 0
    (protected,) = [s for s in report.subscribers if s.protected]
    assert protected.chaos_nacks == protected.chaos_failures == 0
    assert sum(s.dead_lettered for s in report.subscribers) > 0
    assert broker.queue_names() == []
