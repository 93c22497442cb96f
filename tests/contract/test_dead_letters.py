"""The dead-letter port on every broker: peek, dump, requeue and discard, as an operator uses them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from eventyard import MessageSubscriber, Uuid
from eventyard.dead_letter_box import DeadLetterBackend, DeadLetterBox
from eventyard.dead_letter_reports import Report
from eventyard.dead_letters import PREVIOUS_FAILURE, REQUEUE_COUNT, REQUEUED_FROM, Selection
from eventyard.errors import ConfigurationError, QueueNotFoundError
from eventyard.retry import FAILURE_ROUTING_KEY, FAILURE_TYPE, REDELIVERY_COUNT

from .conftest import Yard
from .recording import Runs, failing
from .samples import UserCreated

T = TypeVar("T")
DEAD = 4


def _with_box(yard: Yard, operation: Callable[[DeadLetterBox], Awaitable[T]]) -> T:
    """Run ``operation`` on the broker's dead-letter box, on the backend's loop."""
    backend = cast(DeadLetterBackend, yard.backend)

    async def run() -> T:
        async with backend.dead_letter_box() as box:
            return await operation(box)

    return yard.backend.loop_thread.run(run())


class Letters:
    """``DEAD`` events dead-lettered by a handler that fails on its first ``DEAD`` runs."""

    def __init__(self, yard: Yard) -> None:
        self.yard = yard
        self.runs = Runs()
        self.handler = failing(self.runs, "send_mail_handler", fail_times=DEAD)
        self.subscribers = [MessageSubscriber.from_message(UserCreated, [self.handler])]
        yard.configure(self.subscribers)
        self.consumer = yard.consumer(self.subscribers, max_retries=0)
        self.events = [UserCreated(user_id=Uuid.v4()) for _ in range(DEAD)]
        yard.event_bus().publish(self.events)
        self.queue = yard.queue_of(UserCreated, self.handler)
        self.dead = f"dead_letter.{self.queue}"
        self.wait_for(DEAD)
        self.ids = [e.get_message_id() for e in self.events]

    def count(self) -> int:
        return self.yard.queue_counts(self.dead)[self.dead]

    def wait_for(self, count: int) -> None:
        self.yard.wait_until(lambda: self.count() == count, what=f"{count} dead letters")
        self.yard.settle()

    def requeue(self, **options: Any) -> Report:
        org, svc = self.yard.organization, self.yard.service
        return _with_box(self.yard, lambda box: box.requeue(
            org, svc, [self.dead], store_queue=self.yard.store_queue, **options))


@pytest.fixture
def letters(yard: Yard) -> Letters:
    return Letters(yard)


def test_peek_and_dump_read_every_dead_letter_and_leave_them_in_place(letters: Letters) -> None:
    peeked = _with_box(letters.yard, lambda box: box.peek(letters.dead))
    assert sorted(letter.id for letter in peeked) == sorted(letters.ids)
    assert {letter.type for letter in peeked} == {"user.created"}
    assert {letter.failure.type for letter in peeked} == {"RuntimeError"}
    assert not any(letter.undecodable for letter in peeked)
    lines: list[str] = []
    assert _with_box(letters.yard, lambda box: box.dump([letters.dead], lines.append)) == DEAD
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(letters.ids)
    assert _with_box(letters.yard, lambda box: box.dump([letters.dead], lines.append, limit=2)) == 2
    seen: set[str] = set()
    one = Selection.of([letters.ids[1], "nobody"])
    [picked] = _with_box(letters.yard, lambda box: box.peek(letters.dead, select=one, seen=seen))
    assert picked.id == letters.ids[1] and seen == {letters.ids[1]}
    assert letters.count() == DEAD


def test_summarize_groups_each_queue_by_type_and_failure(letters: Letters) -> None:
    missing = f"{letters.dead}.missing"
    summary, absent = _with_box(letters.yard, lambda box: box.summarize([letters.dead, missing]))
    assert (summary.queue, summary.exists, summary.count, summary.inspected) == (
        letters.dead, True, DEAD, DEAD)
    [group] = summary.groups
    assert (group.type, group.error, group.undecodable, group.count) == (
        "user.created", "RuntimeError", False, DEAD)
    assert (absent.queue, absent.exists, absent.count) == (missing, False, 0)
    assert _with_box(letters.yard, lambda box: box.count(letters.dead)) == DEAD
    assert _with_box(letters.yard, lambda box: box.count(missing)) is None
    [limited] = _with_box(letters.yard, lambda box: box.summarize([letters.dead], limit=1))
    assert (limited.count, limited.inspected) == (DEAD, 1)
    assert letters.count() == DEAD


def test_a_dry_run_moves_nothing(letters: Letters) -> None:
    report = letters.requeue(dry_run=True)
    assert report.count("would_requeue") == DEAD and report.count("requeued") == 0
    letters.yard.settle()
    assert letters.count() == DEAD
    assert letters.runs.count("send_mail_handler") == DEAD


def test_requeue_sends_the_selected_letters_back_to_their_subscriber_afresh(letters: Letters) -> None:
    letters.consumer.stop(timeout=5)
    chosen = letters.ids[:2]
    report = letters.requeue(select=Selection.of([*chosen, "not-there"]))
    assert (report.count("requeued"), report.count("skipped")) == (2, DEAD - 2)
    assert report.not_found == ["not-there"]
    assert letters.count() == DEAD - 2
    queue = letters.queue
    letters.yard.wait_until(lambda: letters.yard.queue_counts(queue)[queue] == 2,
                            what="the copies back in the subscriber's queue")
    copies = letters.yard.messages_in(queue)
    for copy in copies:
        headers = copy.headers
        assert int(headers[REDELIVERY_COUNT]) == 0
        assert int(headers[REQUEUE_COUNT]) == 1
        assert headers[REQUEUED_FROM] == letters.dead
        assert headers[PREVIOUS_FAILURE]["type"] == "RuntimeError"
        assert FAILURE_TYPE not in headers and FAILURE_ROUTING_KEY in headers
    letters.yard.consumer(letters.subscribers, max_retries=0)  # the handler now succeeds
    letters.yard.wait_until(lambda: letters.runs.count("send_mail_handler") == DEAD + 2,
                            what="the requeued messages handled")
    letters.yard.settle()
    handled = [m.get_message_id() for m in letters.runs.of("send_mail_handler")[DEAD:]]
    assert sorted(handled) == sorted(chosen)
    assert letters.yard.queue_counts(queue, f"retry.{queue}", letters.dead) == {
        queue: 0, f"retry.{queue}": 0, letters.dead: DEAD - 2}


def test_discard_deletes_the_selected_letters_for_good(letters: Letters) -> None:
    report = _with_box(letters.yard, lambda box: box.discard(
        [letters.dead], select=Selection.of([letters.ids[0], letters.ids[3]])))
    assert (report.count("discarded"), report.count("skipped")) == (2, DEAD - 2)
    assert letters.count() == DEAD - 2
    left = _with_box(letters.yard, lambda box: box.peek(letters.dead))
    assert sorted(letter.id for letter in left) == sorted(letters.ids[1:3])
    everything = _with_box(letters.yard, lambda box: box.discard([letters.dead]))
    assert everything.count("discarded") == DEAD - 2
    assert letters.count() == 0
    letters.yard.settle()
    assert letters.runs.count("send_mail_handler") == DEAD  # nothing ran again


def test_unknown_and_foreign_queues_are_clear_errors(letters: Letters) -> None:
    with pytest.raises(QueueNotFoundError):
        _with_box(letters.yard, lambda box: box.peek(f"{letters.dead}.missing"))
    org, svc = letters.yard.organization, letters.yard.service
    with pytest.raises(ConfigurationError, match="belongs neither"):
        _with_box(letters.yard, lambda box: box.requeue(org, svc, ["dead_letter.someone.else"]))
    assert letters.count() == DEAD
