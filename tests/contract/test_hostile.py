"""Hostile input and handler faults on every broker: handled or dead-lettered, never looped (issue 10).

What a handler can do (raise any ``BaseException``, return what is neither success nor failure,
return a coroutine from a sync function), what a publisher can send (bodies that are not
messages, dates at their limits, forged retry and death headers, headers that nearly fill a
frame), and a graceful stop at concurrency 4: each ends handled or dead-lettered with a reason,
run no more often than the retry policy allows, and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from meiga import Error, Failure, Success

from eventyard import MessageSubscriber, Uuid, codec, naming
from eventyard.ports import OutgoingMessage
from eventyard.retry import FAILURE_ATTEMPTS, FAILURE_HEADERS_DROPPED, FAILURE_TYPE, REDELIVERY_COUNT

from .conftest import Yard
from .samples import UserCreated

MAX_RETRIES = 1
RUNS = MAX_RETRIES + 1


class Custom(BaseException):
    """A BaseException of the handler author's own."""


class Ids:
    """Runs of each message id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: Counter[str] = Counter()

    def add(self, message_id: str) -> None:
        with self._lock:
            self.runs[message_id] += 1

    def count(self, message_id: str) -> int:
        with self._lock:
            return self.runs[message_id]

    def total(self) -> int:
        with self._lock:
            return sum(self.runs.values())


def _act(do: str) -> Any:
    raising: dict[str, BaseException] = {
        "raise": RuntimeError("mail is down"), "keyboard_interrupt": KeyboardInterrupt("handler"),
        "system_exit": SystemExit(3), "generator_exit": GeneratorExit(),
        "base_exception": Custom("custom"), "cancelled": asyncio.CancelledError("handler"),
    }
    if do in raising:
        raise raising[do]
    return {"ok": None, "failure": Failure(Error()), "string": "error: could not send mail",
            "zero": 0, "one": 1,
            "nested": Success(Failure(Error())), "success_success": Success(Success(True))}[do]


async def _gives(value: bool) -> bool:
    return value


def _handler(ids: Ids, kind: str) -> Callable[[Any], Any]:
    if kind == "async":
        async def async_handler(event: UserCreated) -> Any:
            ids.add(event.get_message_id())
            do = event.get_meta().get("do", "ok")
            if do.startswith("coroutine_"):
                return await _gives(do == "coroutine_true")
            return _act(do)
        return async_handler

    def sync_handler(event: UserCreated) -> Any:
        ids.add(event.get_message_id())
        do = event.get_meta().get("do", "ok")
        if do.startswith("coroutine_"):  # a sync decorator around an async handler
            return _gives(do == "coroutine_true")
        return _act(do)
    return sync_handler


# what the handler does -> the failure type of its dead letter (None: handled)
FAULTS: dict[str, str | None] = {
    "raise": "RuntimeError", "failure": "Error",  # a meiga Failure fails as an exception does
    "keyboard_interrupt": "KeyboardInterrupt", "system_exit": "SystemExit",
    "generator_exit": "GeneratorExit", "base_exception": "Custom", "cancelled": "CancelledError",
    "string": "InvalidHandlerResult", "zero": "InvalidHandlerResult", "one": "InvalidHandlerResult",
    "nested": "InvalidHandlerResult", "success_success": "InvalidHandlerResult",
    "coroutine_true": None, "coroutine_false": "HandlerReturnedFalse", "ok": None,
}


def _letters(yard: Yard, queue: str) -> dict[str, Any]:
    """The dead letters of ``queue`` by message id (read from the body)."""
    found = {}
    for letter in yard.messages_in(f"dead_letter.{queue}"):
        try:
            found[json.loads(letter.body)["data"]["id"]] = letter
        except (ValueError, KeyError, TypeError, RecursionError):  # not a message at all
            found[f"undecodable-{len(found)}"] = letter
    return found


@pytest.mark.parametrize(("kind", "concurrency"), [("sync", 1), ("sync", 4), ("async", 1), ("async", 4)])
def test_whatever_a_handler_raises_or_returns_is_handled_or_dead_lettered(
        yard: Yard, kind: str, concurrency: int) -> None:
    ids = Ids()
    handler = _handler(ids, kind)
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=MAX_RETRIES, concurrency=concurrency)
    events = {do: UserCreated(user_id=Uuid.v4()).with_meta({"do": do}) for do in FAULTS}
    yard.event_bus().publish(list(events.values()))
    queue = yard.queue_of(UserCreated, handler)
    dead = sum(1 for failure in FAULTS.values() if failure)
    yard.wait_until(lambda: len(_letters(yard, queue)) == dead, timeout=30, what="the dead letters")
    after = UserCreated(user_id=Uuid.v4())
    yard.event_bus().publish(after)  # the consumer goes on
    yard.wait_until(lambda: ids.count(after.get_message_id()) == 1, timeout=30, what="the next one")
    yard.settle()
    letters = _letters(yard, queue)
    for do, failure in FAULTS.items():
        message_id = events[do].get_message_id()
        if failure is None:
            assert ids.count(message_id) == 1 and message_id not in letters, do
        else:
            assert ids.count(message_id) == RUNS, do
            assert letters[message_id].headers[FAILURE_TYPE] == failure, do
    assert yard.queue_counts(queue)[queue] == 0


def _body(message_id: str, do: str = "ok", **data: Any) -> bytes:
    document = json.loads(codec.encode(UserCreated(user_id=Uuid.v4())))
    document["data"].update(id=message_id, meta={"do": do}, **data)
    return json.dumps(document).encode()


# name -> (body of the message id, headers, runs, failure type of the dead letter or None)
HOSTILE: dict[str, tuple[Callable[[str], bytes], dict[str, Any], int, str | None]] = {
    "date before year 1 in utc": (lambda i: _body(i, occurred_on="0001-01-01T00:00:00+01:00"), {}, 0,
                                  "MessageDecodeError"),
    "date after year 9999 in utc": (lambda i: _body(i, occurred_on="9999-12-31T23:59:59-01:00"), {},
                                    0, "MessageDecodeError"),
    "body not utf-8": (lambda i: b'{"data": {"id": "' + i.encode() + b'", "type": "\xff"}}', {}, 0,
                       "MessageDecodeError"),
    "body nested deep": (lambda i: b"[" * 50_000 + b"]" * 50_000, {}, 0, "MessageDecodeError"),
    "count 2**63-1": (lambda i: _body(i, "raise"), {REDELIVERY_COUNT: 2**63 - 1}, 1, "RuntimeError"),
    "count 2**63-1, bad body": (lambda i: _body(i, occurred_on="0001-01-01T00:00:00+01:00"),
                                {REDELIVERY_COUNT: 2**63 - 1}, 0, "MessageDecodeError"),
    "count negative": (lambda i: _body(i, "raise"), {REDELIVERY_COUNT: -3}, RUNS, "RuntimeError"),
    "count a string": (lambda i: _body(i, "raise"), {REDELIVERY_COUNT: "x"}, RUNS, "RuntimeError"),
    "count a float": (lambda i: _body(i, "raise"), {REDELIVERY_COUNT: 0.5}, RUNS, "RuntimeError"),
    "count a bool": (lambda i: _body(i, "raise"), {REDELIVERY_COUNT: True}, RUNS, "RuntimeError"),
    "x-death junk": (lambda i: _body(i, "raise"), {"x-death": [1, {"count": "x"}]}, RUNS,
                     "RuntimeError"),
    "headers near the frame limit": (lambda i: _body(i, "raise"), {"blob": "b" * 130_000}, 1,
                                     "RuntimeError"),
    "headers near the frame limit, handled": (lambda i: _body(i), {"blob": "b" * 130_000}, 1, None),
}


def test_hostile_messages_are_handled_or_dead_lettered_with_a_reason(yard: Yard) -> None:
    ids = Ids()
    handler = _handler(ids, "sync")
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    yard.configure(subscribers)
    yard.consumer(subscribers, max_retries=MAX_RETRIES)
    routing_key = f"{yard.organization}.{yard.service}.1.event.user_created"
    exchange = naming.exchange(yard.organization, yard.service)
    run = uuid.uuid4().hex[:6]
    message_ids = {name: f"{name.replace(' ', '-')}-{run}" for name in HOSTILE}
    messages = [OutgoingMessage(exchange, routing_key, body(message_ids[name]), headers=dict(headers),
                                message_id=message_ids[name])
                for name, (body, headers, _, _) in HOSTILE.items()]

    async def publish() -> None:
        await (await yard.backend.publisher_transport()).publish(messages)

    yard.backend.loop_thread.run(publish())
    queue = yard.queue_of(UserCreated, handler)
    dead = sum(1 for *_, failure in HOSTILE.values() if failure)
    yard.wait_until(lambda: len(_letters(yard, queue)) == dead, timeout=30, what="the dead letters")
    yard.settle()
    letters = _letters(yard, queue)
    for name, (_, headers, runs, failure) in HOSTILE.items():
        message_id = message_ids[name]
        assert ids.count(message_id) == runs, name
        if failure is None:
            continue
        letter = letters.get(message_id) or next(
            letter for key, letter in letters.items() if key.startswith("undecodable"))
        assert letter.headers[FAILURE_TYPE] == failure, name
        if "blob" in headers:
            assert "blob" in letter.headers[FAILURE_HEADERS_DROPPED], name
    assert int(letters[message_ids["count 2**63-1"]].headers[FAILURE_ATTEMPTS]) == 10**9 + 1
    assert yard.queue_counts(queue)[queue] == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_graceful_stop_at_concurrency_4_acks_every_handled_message(yard: Yard, kind: str) -> None:
    ids = Ids()
    slow = _handler(ids, kind)

    if kind == "async":
        async def slow_handler(event: UserCreated) -> None:
            await asyncio.sleep(0.01)  # the handler's own work
            await slow(event)
    else:
        def slow_handler(event: UserCreated) -> None:  # type: ignore[misc]
            time.sleep(0.01)  # the handler's own work
            slow(event)

    subscribers = [MessageSubscriber.from_message(UserCreated, [slow_handler])]
    yard.configure(subscribers)
    first = yard.consumer(subscribers, max_retries=MAX_RETRIES, concurrency=4, prefetch=10)
    events = [UserCreated(user_id=Uuid.v4()) for _ in range(40)]
    yard.event_bus().publish(events)
    queue = yard.queue_of(UserCreated, slow_handler)
    yard.wait_until(lambda: ids.total() >= 10, timeout=30, what="ten handled")
    first.stop(timeout=10)
    handled = ids.total()
    # Every handled message was acked before the stop returned; the rest are back in the queue.
    yard.wait_until(lambda: yard.queue_counts(queue)[queue] == 40 - handled, timeout=10,
                    what=f"{40 - handled} messages back in the queue")
    yard.consumer(subscribers, max_retries=MAX_RETRIES, concurrency=4, prefetch=10)
    yard.wait_until(lambda: ids.total() >= 40, timeout=30, what="the rest handled")
    yard.settle()
    assert ids.total() == 40 and all(ids.count(e.get_message_id()) == 1 for e in events)
