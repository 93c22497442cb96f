"""RetryPolicy, the delay ladder's arithmetic and names, and the topology it adds (no broker)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from meiga import Failure

from eventyard import (
    ConfigurationError,
    HandlerTimeout,
    MessageSubscriber,
    RetryPolicy,
    SubscriberError,
    Unrecoverable,
    naming,
)
from eventyard.retry import (
    DELAY_LEFT,
    DELAY_LEVELS_MS,
    DELAY_UNIT_MS,
    FAILURE_DELAYS,
    MAX_DELAY_MS,
    REDELIVERY_COUNT,
    Decision,
    delay_hop,
    delay_left,
    failure_headers,
)
from eventyard.subscribers import SUCCESS, outcome_of, outcome_of_exception, subscriptions_of
from eventyard.topology import TopologyOptions, build_topology, delay_topology, route_of

from .test_naming import UserCreated

FAILED = outcome_of_exception(RuntimeError("boom"))


def test_the_default_policy_is_the_seeds_fixed_delay() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.is_default, policy.delay_ms(0)) == (5, True, None)
    assert RetryPolicy(3) == RetryPolicy(max_retries=3) != RetryPolicy(4)
    assert [RetryPolicy(2).decide(FAILED, n) for n in range(3)] == [
        Decision.RETRY, Decision.RETRY, Decision.DEAD_LETTER]
    assert RetryPolicy(0).decide(SUCCESS, 10) is Decision.ACK


def test_a_list_of_delays_sets_the_budget_and_repeats_its_last_delay() -> None:
    policy = RetryPolicy(delays_ms=[1000, 10_000, 60_000])
    assert policy.max_retries == 3 and not policy.is_default
    assert [policy.delay_ms(n) for n in range(5)] == [1000, 10_000, 60_000, 60_000, 60_000]
    assert RetryPolicy(5, delays_ms=[100]).max_retries == 5


def test_exponential_grows_by_its_factor_up_to_its_maximum() -> None:
    policy = RetryPolicy.exponential(first_ms=1000, factor=2.0, max_ms=5000, jitter=0)
    assert [policy.delay_ms(n) for n in range(5)] == [1000, 2000, 4000, 5000, 5000]
    assert policy.delay_ms(10**9) == 5000  # no overflow
    assert RetryPolicy.exponential().max_retries == 10


def test_jitter_stays_within_its_bounds_and_below_the_maximum() -> None:
    policy = RetryPolicy.exponential(first_ms=1000, factor=3.0, max_ms=8000, jitter=0.2)
    rng = random.Random(7)
    for n, base in enumerate((1000, 3000, 8000)):
        delays = [policy.delay_ms(n, rng) for _ in range(500)]
        assert min(delays) >= base * 0.8 and max(delays) <= min(8000, base * 1.2)
        assert len(set(delays)) > 50  # spread, not one value


@pytest.mark.parametrize("make", [
    lambda: RetryPolicy(-1), lambda: RetryPolicy(True), lambda: RetryPolicy("3"),  # type: ignore[arg-type]
    lambda: RetryPolicy(delays_ms=[]), lambda: RetryPolicy(delays_ms=[-1]),
    lambda: RetryPolicy(delays_ms=[1.5]),  # type: ignore[list-item]
    lambda: RetryPolicy(delays_ms="1000"),  # type: ignore[arg-type]
    lambda: RetryPolicy(delays_ms=[MAX_DELAY_MS + 1]),
    lambda: RetryPolicy(unrecoverable=[ValueError, "KeyError"]),  # type: ignore[list-item]
    lambda: RetryPolicy.exponential(first_ms=2000, max_ms=1000),
    lambda: RetryPolicy.exponential(factor=0.5), lambda: RetryPolicy.exponential(jitter=1.5),
    lambda: RetryPolicy.exponential(max_retries=-1),
])
def test_a_bad_policy_is_a_configuration_error(make: object) -> None:
    with pytest.raises(ConfigurationError):
        make()  # type: ignore[operator]


def test_a_policy_cannot_be_changed() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_retries = 3  # type: ignore[misc]


def test_unrecoverable_errors_skip_retries_however_they_arrive() -> None:
    policy = RetryPolicy(5, unrecoverable=[PermissionError])
    for outcome in (outcome_of_exception(Unrecoverable("no")),
                    outcome_of_exception(PermissionError("no")),
                    outcome_of(Failure(PermissionError("no"))),
                    outcome_of(Failure(Unrecoverable("no")))):
        assert policy.decide(outcome, 0) is Decision.DEAD_LETTER
    assert policy.decide(outcome_of_exception(HandlerTimeout("slow")), 0) is Decision.RETRY
    assert RetryPolicy(5, unrecoverable=KeyError).unrecoverable == (KeyError,)


@pytest.mark.parametrize("delay", [1, 99, 100, 150, 200, 1500, 3_600_000, 86_400_000,
                                   MAX_DELAY_MS])
def test_a_delay_is_the_sum_of_its_levels_rounded_up_to_a_unit(delay: int) -> None:
    left, waited = delay, []
    while (hop := delay_hop(left)) is not None:
        level, left = hop
        assert level in DELAY_LEVELS_MS
        waited.append(level)
    units = -(-delay // DELAY_UNIT_MS)
    assert sum(waited) == units * DELAY_UNIT_MS
    assert waited == sorted(waited, reverse=True)  # the longest level first


def test_nothing_to_wait_is_no_hop_and_a_forged_delay_is_bounded() -> None:
    assert delay_hop(0) is None and delay_hop(-5) is None
    assert delay_left({}) == 0
    assert delay_left({DELAY_LEFT: "1200"}) == 1200
    assert delay_left({DELAY_LEFT: 10**30}) == MAX_DELAY_MS
    assert delay_left({DELAY_LEFT: [1]}) == 0


def test_failure_headers_record_the_delays_and_keep_them_in_the_dead_letter() -> None:
    first = failure_headers({}, FAILED, queue="q", routing_key="k", retries=1, delay_ms=200)
    second = failure_headers(first, FAILED, queue="q", routing_key="k", retries=2, delay_ms=400)
    dead = failure_headers(second, FAILED, queue="q", routing_key="k", retries=2)
    assert (first[FAILURE_DELAYS], second[FAILURE_DELAYS], dead[FAILURE_DELAYS]) == (
        "200", "200,400", "200,400")
    assert dead[REDELIVERY_COUNT] == 2
    plain = failure_headers({}, FAILED, queue="q", routing_key="k", retries=1)
    assert FAILURE_DELAYS not in plain and DELAY_LEFT not in plain
    long = {FAILURE_DELAYS: ",".join(["86400000"] * 100)}
    assert len(failure_headers(long, FAILED, queue="q", routing_key="k", retries=1,
                               delay_ms=5)[FAILURE_DELAYS]) <= 200


def test_delay_names() -> None:
    q = "acme.registration.1.event.user_created.send_mail"
    assert naming.delay_exchange("acme", "registration") == "delay.acme.registration"
    assert naming.delay_queue("acme", "registration", 1600) == "delay.acme.registration.1600"
    assert naming.delay_key(1600, q) == f"1600.retry.{q}"
    assert naming.delay_level_binding(1600) == "1600.#"
    assert naming.delay_return_binding(q) == f"*.retry.{q}"
    assert naming.is_delay_queue("delay.acme.registration.100")
    assert naming.is_delay_queue(f"retry.{q}") and not naming.is_delay_queue(q)


def _send_mail(message: UserCreated) -> None:
    pass


def test_the_default_policy_adds_nothing_to_the_topology() -> None:
    plain = build_topology("acme", "registration", subscriptions_of(
        [MessageSubscriber.from_message(UserCreated, _send_mail)]))
    fixed = build_topology("acme", "registration", subscriptions_of(
        [MessageSubscriber.from_message(UserCreated, _send_mail, retry=RetryPolicy(2))]))
    assert plain == fixed
    assert not any(q.name.startswith("delay.") for q in plain.queues)


def test_a_policy_of_its_own_adds_one_ladder_per_service_and_one_binding_per_queue() -> None:
    policy = RetryPolicy.exponential()

    def _send_sms(message: UserCreated) -> None:
        pass

    topology = build_topology("acme", "registration", subscriptions_of(
        [MessageSubscriber.from_message(UserCreated, [_send_mail, _send_sms], retry=policy)]),
        TopologyOptions(queue_type="quorum"))
    ladder = [q for q in topology.queues if q.name.startswith("delay.")]
    assert [q.name for q in ladder] == [f"delay.acme.registration.{ms}" for ms in DELAY_LEVELS_MS]
    for spec, level in zip(ladder, DELAY_LEVELS_MS, strict=True):
        assert dict(spec.arguments) == {"x-message-ttl": level,
                                        "x-dead-letter-exchange": "acme.registration",
                                        "x-queue-type": "quorum",
                                        "x-quorum-initial-group-size": 3,
                                        "x-dead-letter-strategy": "at-least-once",
                                        "x-overflow": "reject-publish"}
    returns = [b for b in topology.bindings if b.routing_key.startswith("*.retry.")]
    assert {(b.exchange, b.routing_key) for b in returns} == {
        ("acme.registration", "*.retry.acme.registration.1.event.user_created._send_mail"),
        ("acme.registration", "*.retry.acme.registration.1.event.user_created._send_sms")}
    assert "delay.acme.registration" in [e.name for e in topology.exchanges]
    assert topology.for_deletion().queues == topology.queues  # its own ladder goes with it


def test_another_services_ladder_is_not_deleted_with_this_service() -> None:
    subscriber = MessageSubscriber.from_message(UserCreated, _send_mail, publisher="registration",
                                                retry=RetryPolicy(delays_ms=[100]))
    topology = build_topology("acme", "billing", subscriptions_of([subscriber]))
    assert naming.delay_queue("acme", "registration", 100) in [q.name for q in topology.queues]
    kept = topology.for_deletion()
    assert not any(q.name.startswith("delay.") for q in kept.queues)
    assert "delay.acme.registration" not in [e.name for e in kept.exchanges]
    route = route_of("acme", "billing", subscription_queue_name(subscriber))
    assert (route.main_exchange, route.delay_exchange) == ("acme.registration",
                                                           "delay.acme.registration")


def subscription_queue_name(subscriber: MessageSubscriber) -> str:
    from eventyard.topology import subscription_queue

    [subscription] = subscriptions_of([subscriber])
    return subscription_queue("acme", "billing", subscription, "store")


def test_delay_topology_checks_its_names() -> None:
    with pytest.raises(ConfigurationError):
        delay_topology("acme", "registration", ["x" * 300])


@pytest.mark.parametrize("kwargs", [{"retry": 3}, {"timeout": 0}, {"timeout": -1.0},
                                    {"timeout": float("inf")}, {"timeout": True}])
def test_bad_subscriber_settings_are_subscriber_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(SubscriberError):
        MessageSubscriber.from_message(UserCreated, _send_mail, **kwargs)  # type: ignore[arg-type]


def test_the_store_keeps_the_fixed_delay() -> None:
    class Store(MessageSubscriber):
        retry_policy = RetryPolicy(delays_ms=[100])

        def is_all_messages(self) -> bool:
            return True

        def subscribed_to(self) -> list[type]:
            return []

        def handle(self, message: object) -> None:
            pass

    with pytest.raises(SubscriberError, match="store"):
        subscriptions_of([Store()])


def test_a_requeued_dead_letter_starts_its_policy_again() -> None:
    from eventyard.rabbitmq.dead_letters import DeadLetter, Failure, requeued_headers

    headers = failure_headers({}, FAILED, queue="q", routing_key="k", retries=3, delay_ms=400)
    letter = DeadLetter("dead_letter.q", b"{}", headers, "m-1", None, "dead_letter.q", None, False,
                        Failure.from_headers(headers))
    again = requeued_headers(letter)
    assert again[REDELIVERY_COUNT] == 0
    assert FAILURE_DELAYS not in again and DELAY_LEFT not in again
    assert RetryPolicy(delays_ms=[200, 400]).delay_ms(again[REDELIVERY_COUNT]) == 200
