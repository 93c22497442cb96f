"""Retry policies on both brokers: delays of their own through the delay ladder, errors that skip
retries, handler timeouts (DESIGN §5, issue 13).

On the memory broker the virtual clock crosses every delay at once; on RabbitMQ the spacing of
the runs is read from the handler's own timestamps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from meiga import Failure

from eventyard import HandlerTimeout, MessageSubscriber, RetryPolicy, Unrecoverable, Uuid, naming
from eventyard.messages import Message
from eventyard.retry import DELAY_LEVELS_MS, FAILURE_DELAYS, FAILURE_TYPE, REDELIVERY_COUNT

from .conftest import Yard
from .samples import UserCreated

# Late on RabbitMQ: each level a copy crosses adds a publish, a TTL check and a delivery.
SLACK_SECONDS = 0.6


class Timed:
    """Runs of a handler with their times (``time.monotonic``), from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: list[float] = []

    def add(self) -> int:
        with self._lock:
            self.times.append(time.monotonic())
            return len(self.times)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.times)

    def gaps(self) -> list[float]:
        with self._lock:
            return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def failing_handler(timed: Timed, name: str = "send_mail_handler",
                    error: Callable[[int], BaseException] | None = None) -> Callable[[Any], Any]:
    """A sync handler that records its run and raises (``error(run)``, a RuntimeError if None)."""

    def handler(message: Message) -> None:
        run = timed.add()
        raise (error(run) if error is not None else RuntimeError(f"failed on run {run}"))

    handler.__name__ = handler.__qualname__ = name
    return handler


def dead_letter_of(yard: Yard, handler: Callable[..., Any]) -> Any:
    queue = yard.queue_of(UserCreated, handler)
    dead = naming.dead_letter_queue(queue)
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, timeout=15, what="the dead letter")
    yard.settle()
    [letter] = yard.messages_in(dead)
    return letter


def run(yard: Yard, handler: Callable[..., Any], policy: RetryPolicy | None, *,
        max_retries: int = 5, timeout: float | None = None, **settings: Any) -> None:
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler], retry=policy,
                                                  timeout=timeout)]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=max_retries, **settings)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))


def delays_of(letter: Any) -> list[int]:
    return [int(d) for d in str(letter.headers[FAILURE_DELAYS]).split(",")]


def test_a_list_of_delays_is_waited_in_turn_then_the_message_is_dead_lettered(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed)
    run(yard, handler, RetryPolicy(delays_ms=[200, 400, 800]))
    letter = dead_letter_of(yard, handler)
    assert timed.count == 4
    assert int(letter.headers[REDELIVERY_COUNT]) == 3
    assert delays_of(letter) == [200, 400, 800]
    queue = yard.queue_of(UserCreated, handler)
    ladder = [naming.delay_queue(yard.organization, yard.service, level) for level in DELAY_LEVELS_MS]
    assert set(yard.queue_counts(queue, *ladder).values()) == {0}
    if yard.broker.name == "rabbitmq":  # runs spaced by the delays, from the handler's own clock
        for gap, delay in zip(timed.gaps(), (0.2, 0.4, 0.8), strict=True):
            assert delay - 0.01 <= gap <= delay + SLACK_SECONDS, timed.gaps()


def test_exponential_backoff_stays_within_its_jitter_and_maximum(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed)
    policy = RetryPolicy.exponential(first_ms=200, factor=2.0, max_ms=600, max_retries=3,
                                     jitter=0.5)
    run(yard, handler, policy)
    letter = dead_letter_of(yard, handler)
    assert timed.count == 4
    delays = delays_of(letter)
    for delay, base in zip(delays, (200, 400, 600), strict=True):
        assert base * 0.5 <= delay <= min(600, base * 1.5), delays
    if yard.broker.name == "rabbitmq":
        for gap, delay in zip(timed.gaps(), delays, strict=True):
            # A delay is waited in whole units of 100 ms (rounded up).
            assert delay / 1000 - 0.01 <= gap <= delay / 1000 + 0.1 + SLACK_SECONDS, (gap, delays)


def test_a_subscriber_policy_overrides_the_consumers_retry_budget(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed)
    run(yard, handler, RetryPolicy(1), max_retries=5)  # the default kind: retry.Q's TTL
    letter = dead_letter_of(yard, handler)
    assert timed.count == 2
    assert FAILURE_DELAYS not in letter.headers


@pytest.mark.parametrize("how", ["raise Unrecoverable", "raise a listed type",
                                 "return Failure of a listed type"])
def test_an_unrecoverable_error_goes_straight_to_the_dead_letter_queue(yard: Yard, how: str) -> None:
    timed = Timed()

    def send_mail_handler(message: Message) -> Any:
        timed.add()
        if how == "raise Unrecoverable":
            raise Unrecoverable("the address does not exist")
        if how == "raise a listed type":
            raise PermissionError("the address does not exist")
        return Failure(PermissionError("the address does not exist"))

    run(yard, send_mail_handler, RetryPolicy(5, unrecoverable=[PermissionError]))
    letter = dead_letter_of(yard, send_mail_handler)
    assert timed.count == 1
    assert letter.headers[FAILURE_TYPE] == ("Unrecoverable" if how == "raise Unrecoverable"
                                            else "PermissionError")
    assert int(letter.headers[REDELIVERY_COUNT]) == 0


def test_unrecoverable_skips_retries_with_the_consumers_default_policy(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed, error=lambda run: Unrecoverable(f"run {run}: give up"))
    run(yard, handler, None)
    letter = dead_letter_of(yard, handler)
    assert timed.count == 1
    assert letter.headers[FAILURE_TYPE] == "Unrecoverable"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: lets an abandoned sync handler's thread end."""
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_running_past_its_timeout_fails_and_follows_its_policy(
        yard: Yard, kind: str, release: threading.Event) -> None:
    timed = Timed()
    if kind == "sync":
        def send_mail_handler(message: Message) -> None:
            timed.add()
            release.wait(10)
        handler: Callable[..., Any] = send_mail_handler
    else:
        async def send_mail_handler_async(message: Message) -> None:
            timed.add()
            await asyncio.sleep(3600)
        send_mail_handler_async.__name__ = "send_mail_handler"
        handler = send_mail_handler_async
    run(yard, handler, RetryPolicy(delays_ms=[100]), timeout=0.3)
    letter = dead_letter_of(yard, handler)
    assert timed.count == 2
    assert letter.headers[FAILURE_TYPE] == "HandlerTimeout"
    assert issubclass(HandlerTimeout, TimeoutError)


def test_a_consumer_wide_timeout_and_policy_apply_to_subscribers_without_their_own(
        yard: Yard, release: threading.Event) -> None:
    timed = Timed()

    def send_mail_handler(message: Message) -> None:
        timed.add()
        release.wait(10)

    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler],
                                                  retry=RetryPolicy(delays_ms=[100, 100]))]
    yard.configure(subscribers)
    yard.consumer(subscribers, handler_timeout=0.3, retry=RetryPolicy(0))
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    letter = dead_letter_of(yard, send_mail_handler)
    assert timed.count == 3  # the subscriber's policy, the consumer's timeout
    assert letter.headers[FAILURE_TYPE] == "HandlerTimeout"


class SendMailOnUserCreated(MessageSubscriber):
    """A class subscriber with a policy and a timeout of its own."""

    retry_policy = RetryPolicy(delays_ms=[100, 200], unrecoverable=[PermissionError])
    handler_timeout = 5.0
    timed = Timed()

    def subscribed_to(self) -> list[type[Message]]:
        return [UserCreated]

    def handle(self, message: Message) -> None:
        run = self.timed.add()
        if run == 1:
            raise RuntimeError("first run fails")
        raise PermissionError("then it cannot succeed")


def test_a_class_subscriber_sets_its_policy_as_class_attributes(yard: Yard) -> None:
    SendMailOnUserCreated.timed = Timed()
    subscribers = [SendMailOnUserCreated()]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=0)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    queue = f"{yard.organization}.{yard.service}.1.event.user_created.send_mail_on_user_created"
    dead = naming.dead_letter_queue(queue)
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, timeout=15, what="the dead letter")
    yard.settle()
    [letter] = yard.messages_in(dead)
    assert SendMailOnUserCreated.timed.count == 2
    assert letter.headers[FAILURE_TYPE] == "PermissionError"
    assert delays_of(letter) == [100]


@pytest.mark.parametrize("yard", ["memory"], indirect=True)
def test_the_virtual_clock_crosses_delays_of_hours_and_days_at_once(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed)
    started = time.monotonic()
    run(yard, handler, RetryPolicy(delays_ms=[3_600_000, 86_400_000, 7 * 86_400_000]))
    letter = dead_letter_of(yard, handler)
    assert timed.count == 4
    assert delays_of(letter) == [3_600_000, 86_400_000, 7 * 86_400_000]
    assert time.monotonic() - started < 10


def _ladder_counts(yard: Yard) -> dict[int, int]:
    names = {naming.delay_queue(yard.organization, yard.service, level): level
             for level in DELAY_LEVELS_MS}
    return {names[queue]: count for queue, count in yard.queue_counts(*names).items() if count}


@pytest.mark.parametrize("yard", [pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)],
                         indirect=True)
def test_delayed_copies_wait_in_the_broker_while_the_consumer_restarts(yard: Yard) -> None:
    timed = Timed()
    handler = failing_handler(timed)
    subscribers = [MessageSubscriber.from_message(
        UserCreated, [handler], retry=RetryPolicy(delays_ms=[1500, 3_600_000]))]
    yard.configure(subscribers)
    consumer = yard.consumer(subscribers)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    queue = yard.queue_of(UserCreated, handler)
    # 1500 ms = 800 + 400 + 200 + 100: the copy waits on the first level; restart meanwhile.
    yard.wait_until(lambda: _ladder_counts(yard) == {800: 1}, what="the copy on the 800 ms level")
    consumer.stop(timeout=5)
    consumer = yard.consumer(subscribers)
    yard.wait_until(lambda: timed.count == 2, timeout=10, what="the second run")
    assert 1.5 - 0.01 <= timed.gaps()[0] <= 1.5 + SLACK_SECONDS, timed.gaps()
    # One hour: 3,276,800 ms first. It waits in the broker, not unacked in a consumer.
    yard.wait_until(lambda: _ladder_counts(yard) == {3_276_800: 1}, what="the copy on a level")
    consumer.stop(timeout=5)
    assert yard.queue_counts(queue)[queue] == 0
    yard.consumer(subscribers)
    yard.settle()
    assert _ladder_counts(yard) == {3_276_800: 1}  # none lost
    assert timed.count == 2  # none early
    [copy] = yard.messages_in(naming.delay_queue(yard.organization, yard.service, 3_276_800))
    assert int(copy.headers["retry_delay_left_ms"]) == 3_600_000 - 3_276_800


def test_a_consumer_wide_policy_declares_the_ladder_it_needs(yard: Yard) -> None:
    from eventyard import MessageConfigurer

    timed = Timed()
    handler = failing_handler(timed)
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    yard.configure(subscribers)  # the seed's topology only: no ladder
    assert _ladder_counts(yard) == {}
    # Teardown deletes the ladder the consumer declares, as the configurer would have.
    cleaner = MessageConfigurer(yard.backend, yard.organization, yard.service, options=yard.options())
    yard._configured.append((cleaner, [MessageSubscriber.from_message(
        UserCreated, [handler], retry=RetryPolicy(delays_ms=[100]))]))
    yard.consumer(subscribers, retry=RetryPolicy(delays_ms=[300, 100]))
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    letter = dead_letter_of(yard, handler)
    assert timed.count == 3
    assert delays_of(letter) == [300, 100]
