"""Retries and dead letters: only the failing subscriber retries; N retries, then one dead letter."""

from __future__ import annotations

import pytest

from eventyard import MessageSubscriber, Uuid
from eventyard.retry import (
    FAILURE_ATTEMPTS,
    FAILURE_FIRST_AT,
    FAILURE_HOST,
    FAILURE_LAST_AT,
    FAILURE_MESSAGE,
    FAILURE_QUEUE,
    FAILURE_ROUTING_KEY,
    FAILURE_STACK,
    FAILURE_TYPE,
    REDELIVERY_COUNT,
)

from .conftest import Yard
from .recording import Runs, failing, recording
from .samples import UserCreated


def _routing_key(yard: Yard) -> str:
    return f"{yard.organization}.{yard.service}.1.event.user_created"


def test_a_failing_handler_is_retried_only_for_its_subscriber(yard: Yard) -> None:
    runs = Runs()
    send_mail_handler = failing(runs, "send_mail_handler")
    subscribers = [
        MessageSubscriber.from_message(UserCreated, [recording(runs, "send_sms_handler"),
                                                     send_mail_handler]),
        MessageSubscriber.all_messages([recording(runs, "store_handler")]),
    ]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=2)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    dead = f"dead_letter.{yard.queue_of(UserCreated, send_mail_handler)}"
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, what="the dead letter")
    yard.settle()
    assert (runs.count("send_mail_handler"), runs.count("send_sms_handler"),
            runs.count("store_handler")) == (3, 1, 1)
    yard.recorder.assert_retried(UserCreated, times=2, handler="send_mail_handler")
    yard.recorder.assert_retried(UserCreated, times=0, handler="send_sms_handler")


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_n_means_n_plus_one_runs_then_one_dead_letter(yard: Yard, max_retries: int) -> None:
    runs = Runs()
    send_mail_handler = failing(runs, "send_mail_handler")
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=max_retries)
    event = UserCreated(user_id=Uuid.v4())
    yard.event_bus().publish(event)
    queue = yard.queue_of(UserCreated, send_mail_handler)
    dead = f"dead_letter.{queue}"
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, what="the dead letter")
    yard.settle()
    assert runs.count("send_mail_handler") == max_retries + 1
    assert yard.queue_counts(queue, f"retry.{queue}", dead) == {queue: 0, f"retry.{queue}": 0, dead: 1}
    [letter] = yard.messages_in(dead)
    headers = letter.headers
    assert int(headers[REDELIVERY_COUNT]) == max_retries
    assert headers[FAILURE_TYPE] == "RuntimeError"
    assert headers[FAILURE_MESSAGE] == f"send_mail_handler failed on run {max_retries + 1}"
    assert "RuntimeError" in headers[FAILURE_STACK]
    assert int(headers[FAILURE_ATTEMPTS]) == max_retries + 1
    assert headers[FAILURE_QUEUE] == queue
    assert headers[FAILURE_ROUTING_KEY] == _routing_key(yard)
    assert headers[FAILURE_FIRST_AT] <= headers[FAILURE_LAST_AT]
    assert headers[FAILURE_HOST]
    assert event.get_message_id().encode() in letter.body
    yard.recorder.assert_dead_lettered(UserCreated, times=1)


def test_a_flaky_handler_succeeds_on_its_second_run(yard: Yard) -> None:
    runs = Runs()
    send_mail_handler = failing(runs, "send_mail_handler", fail_times=1)
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=3)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    yard.recorder.wait_until_handled(UserCreated, times=1)
    yard.settle()
    assert runs.count("send_mail_handler") == 2
    dead = f"dead_letter.{yard.queue_of(UserCreated, send_mail_handler)}"
    assert yard.queue_counts(dead) == {dead: 0}
    yard.recorder.assert_retried(UserCreated, times=1)
    yard.recorder.assert_nothing_dead_lettered()


def test_a_poison_body_is_dead_lettered_with_its_reason_and_consuming_goes_on(yard: Yard) -> None:
    runs = Runs()
    send_mail_handler = recording(runs, "send_mail_handler")
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=3)
    yard.publish_raw(_routing_key(yard), b"this is not json")
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    dead = f"dead_letter.{yard.queue_of(UserCreated, send_mail_handler)}"
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1 and runs.count("send_mail_handler") == 1)
    yard.settle()
    [letter] = yard.messages_in(dead)
    assert letter.body == b"this is not json"
    assert letter.headers[FAILURE_TYPE] == "MessageDecodeError"
    assert "not JSON" in letter.headers[FAILURE_MESSAGE]
    assert int(letter.headers[REDELIVERY_COUNT]) == 0  # never retried
    assert len(yard.recorder.poison()) == 1
    assert runs.count("send_mail_handler") == 1


def test_store_handlers_have_queues_and_retry_budgets_of_their_own(yard: Yard) -> None:
    runs = Runs()
    store = MessageSubscriber.all_messages([recording(runs, "keep"), failing(runs, "archive")])
    yard.configure([store])
    yard.consumer([store], max_retries=1)
    event = UserCreated(user_id=Uuid.v4())
    yard.event_bus().publish(event)
    archive = f"{yard.store_queue}.archive"
    yard.wait_until(lambda: yard.queue_counts(f"dead_letter.{archive}")[f"dead_letter.{archive}"] == 1)
    yard.settle()

    assert runs.count("keep") == 1  # never run again for the other handler's retries
    assert runs.count("archive") == 2  # its own budget: one run and one retry
    [dead] = yard.messages_in(f"dead_letter.{archive}")
    assert dead.headers[FAILURE_QUEUE] == archive
    assert yard.queue_counts(f"dead_letter.{yard.store_queue}") == {f"dead_letter.{yard.store_queue}": 0}
