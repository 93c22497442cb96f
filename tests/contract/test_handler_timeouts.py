"""Handler timeouts through the watchdog, on both brokers (DESIGN §5, issue 13 item 3).

A handler that hangs fails with ``HandlerTimeout`` and follows its retry policy, while the
consumer's other messages keep being handled: an async handler is cancelled, a sync one is
abandoned on its pool thread (a replacement thread takes the rest), in a batch of an ordered
queue too. The consumer-wide timeout is short here (``handler_timeout=0.5``); the default is
``DEFAULT_HANDLER_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventyard import MessageSubscriber, Uuid, naming
from eventyard.messages import Message
from eventyard.retry import FAILURE_TYPE, REDELIVERY_COUNT

from .conftest import Yard
from .samples import UserCreated

OTHERS = 20


class Runs:
    """The runs of a handler, by user id, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: Counter[Uuid] = Counter()

    def add(self, user_id: Uuid) -> None:
        with self._lock:
            self.ids[user_id] += 1

    def of(self, user_id: Uuid) -> int:
        with self._lock:
            return self.ids[user_id]

    def others(self, hung: Uuid) -> Counter[Uuid]:
        with self._lock:
            return Counter({k: v for k, v in self.ids.items() if k != hung})


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: lets the abandoned sync handlers' threads end."""
    event = threading.Event()
    yield event
    event.set()


def hanging_handler(kind: str, runs: Runs, hung: Uuid,
                    release: threading.Event) -> Callable[[Any], Any]:
    """A handler that hangs on the message of ``hung`` and handles every other at once."""
    if kind == "sync":
        def send_mail_handler(message: Message) -> None:
            assert isinstance(message, UserCreated)
            runs.add(message.user_id)
            if message.user_id == hung:
                release.wait(60)
        return send_mail_handler

    async def send_mail_handler_async(message: Message) -> None:
        assert isinstance(message, UserCreated)
        runs.add(message.user_id)
        if message.user_id == hung:
            await asyncio.sleep(3600)

    send_mail_handler_async.__name__ = "send_mail_handler"
    return send_mail_handler_async


@pytest.mark.parametrize("concurrency", [1, 4], ids=["ordered", "concurrent"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hung_handler_times_out_and_is_retried_while_the_others_are_handled(
        yard: Yard, kind: str, concurrency: int, release: threading.Event) -> None:
    runs = Runs()
    hung = Uuid.v4()
    handler = hanging_handler(kind, runs, hung, release)
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=1, handler_timeout=0.5, concurrency=concurrency)
    others = [UserCreated(user_id=Uuid.v4()) for _ in range(OTHERS)]
    # The hung one in the middle: in an ordered queue's batch, those after it run on the
    # replacement thread.
    messages = [*others[:OTHERS // 2], UserCreated(user_id=hung), *others[OTHERS // 2:]]
    yard.event_bus().publish(messages)
    queue = yard.queue_of(UserCreated, handler)
    dead = naming.dead_letter_queue(queue)
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, timeout=20, what="the dead letter")
    yard.settle()
    handled = runs.others(hung)
    assert handled == Counter({m.user_id: 1 for m in others})  # each once: none lost, none twice
    assert runs.of(hung) == 2  # the run, one retry, then dead-lettered
    [letter] = yard.messages_in(dead)
    assert letter.headers[FAILURE_TYPE] == "HandlerTimeout"
    assert int(letter.headers[REDELIVERY_COUNT]) == 1
    assert len(yard.recorder.events("failed")) == 2
    assert len(yard.recorder.handled(UserCreated)) == OTHERS
    assert yard.queue_counts(queue)[queue] == 0


def test_a_hung_sync_handler_leaves_the_pool_working_after_the_timeout(
        yard: Yard, release: threading.Event) -> None:
    """Two hung messages in turn (the pool's only thread stuck twice), then 20 more handled."""
    runs = Runs()
    hung = Uuid.v4()
    handler = hanging_handler("sync", runs, hung, release)
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=1, handler_timeout=0.5)
    yard.event_bus().publish(UserCreated(user_id=hung))
    queue = yard.queue_of(UserCreated, handler)
    dead = naming.dead_letter_queue(queue)
    yard.wait_until(lambda: yard.queue_counts(dead)[dead] == 1, timeout=20, what="the dead letter")
    later = [UserCreated(user_id=Uuid.v4()) for _ in range(OTHERS)]
    yard.event_bus().publish(later)
    yard.wait_until(lambda: sum(runs.others(hung).values()) == OTHERS, timeout=20,
                    what="the later messages")
    yard.settle()
    assert runs.others(hung) == Counter({m.user_id: 1 for m in later})
    assert runs.of(hung) == 2
