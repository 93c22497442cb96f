"""Publishing and consuming: every subscriber gets a typed message once, the store sees all."""

from __future__ import annotations

import threading
import time

import pytest

from eventyard import (
    AsyncDomainEventBus,
    MessageConsumer,
    MessageSubscriber,
    TopologyMismatchError,
    UnroutableError,
    Uuid,
)

from .conftest import Yard
from .recording import Runs, recording
from .samples import NobodyListens, PersistUser, UserConfirmed, UserCreated


def test_every_subscriber_handles_a_typed_message_once_and_the_store_sees_all(yard: Yard) -> None:
    runs = Runs()
    subscribers = [
        MessageSubscriber.from_message(UserCreated, [recording(runs, "send_mail_handler"),
                                                     recording(runs, "send_sms_handler")]),
        MessageSubscriber.from_message(PersistUser, [recording(runs, "persist_user_handler")]),
        MessageSubscriber.all_messages([recording(runs, "store_handler")]),
    ]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    event = UserCreated(user_id=Uuid.v4())
    yard.event_bus().publish(event)
    yard.command_bus().dispatch(PersistUser(user_id=event.user_id))
    yard.wait_until(lambda: runs.count("store_handler") == 2 and runs.count("persist_user_handler") == 1
                    and runs.count("send_mail_handler") == runs.count("send_sms_handler") == 1)
    yard.settle()
    assert [runs.count(h) for h in ("send_mail_handler", "send_sms_handler", "persist_user_handler",
                                    "store_handler")] == [1, 1, 1, 2]
    [mail] = runs.of("send_mail_handler")
    assert type(mail) is UserCreated
    assert (mail.user_id, mail.get_message_id()) == (event.user_id, event.get_message_id())
    assert isinstance(runs.of("persist_user_handler")[0], PersistUser)
    assert sorted(m.get_message_name() for m in runs.of("store_handler")) == ["persist.user", "user.created"]
    yard.recorder.assert_nothing_dead_lettered()


def test_a_command_goes_to_its_one_handler(yard: Yard) -> None:
    runs = Runs()
    subscribers = [MessageSubscriber.from_message(PersistUser, [recording(runs, "persist_user_handler")])]
    yard.configure(subscribers, store=False)
    yard.consumer(subscribers)
    command = PersistUser(user_id=Uuid.v4(), name="bob")
    yard.command_bus().dispatch(command)
    yard.wait_until(lambda: runs.count("persist_user_handler") == 1)
    yard.settle()
    [handled] = runs.of("persist_user_handler")
    assert isinstance(handled, PersistUser) and handled.name == "bob"
    assert runs.count("persist_user_handler") == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_sync_and_async_handlers(yard: Yard, is_async: bool) -> None:
    runs = Runs()
    subscribers = [MessageSubscriber.from_message(UserCreated, [
        recording(runs, "send_mail_handler", is_async=is_async)])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    yard.wait_until(lambda: runs.count("send_mail_handler") == 1)
    yard.recorder.wait_until_handled(UserCreated, times=1, handler="send_mail_handler")


def test_publish_a_list_in_order(yard: Yard) -> None:
    runs = Runs()
    subscribers = [MessageSubscriber.from_message(UserCreated, [recording(runs, "send_mail_handler")])]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    events = [UserCreated(user_id=Uuid.v4()) for _ in range(20)]
    yard.event_bus().publish(events)
    yard.wait_until(lambda: runs.count("send_mail_handler") == 20)
    assert [m.get_message_id() for m in runs.of("send_mail_handler")] == [
        e.get_message_id() for e in events]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-bus", "async-bus"])
def test_a_handler_publishes_from_inside_a_handler(yard: Yard, is_async: bool) -> None:
    runs = Runs()

    def confirm_user(event: UserCreated) -> None:
        yard.event_bus().publish(UserConfirmed(user_id=event.user_id))

    async def confirm_user_async(event: UserCreated) -> None:
        bus = AsyncDomainEventBus(yard.backend.publisher_transport, yard.organization, yard.service)
        await bus.publish(UserConfirmed(user_id=event.user_id))

    subscribers = [
        MessageSubscriber.from_message(UserCreated, [confirm_user_async if is_async else confirm_user]),
        MessageSubscriber.from_message(UserConfirmed, [recording(runs, "welcome_handler")]),
    ]
    yard.configure(subscribers)
    yard.consumer(subscribers)
    event = UserCreated(user_id=Uuid.v4())
    yard.event_bus().publish(event)
    yard.wait_until(lambda: runs.count("welcome_handler") == 1)
    [confirmed] = runs.of("welcome_handler")
    assert isinstance(confirmed, UserConfirmed) and confirmed.user_id == event.user_id
    yard.recorder.assert_nothing_dead_lettered()


def test_an_unroutable_command_raises_with_or_without_a_store(yard: Yard) -> None:
    for store in (False, True):
        yard.configure([], store=store)
        with pytest.raises(UnroutableError, match=r"command nobody\.listens .* reached no queue"):
            yard.command_bus().dispatch(NobodyListens())
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))  # the store keeps every event
    yard.wait_until(lambda: yard.queue_counts(yard.store_queue)[yard.store_queue] == 1)


def test_the_store_sees_every_command_that_has_a_subscriber(yard: Yard) -> None:
    runs = Runs()
    yard.configure([MessageSubscriber.from_message(PersistUser, [recording(runs, "persist")])])
    yard.command_bus().dispatch(PersistUser(user_id=Uuid.v4()))
    queue = yard.queue_of(PersistUser, recording(runs, "persist"))
    yard.wait_until(lambda: yard.queue_counts(yard.store_queue, queue) ==
                    {yard.store_queue: 1, queue: 1})


def test_the_petisco_layout_stores_every_command_as_petisco_does(yard: Yard) -> None:
    yard.configure([], layout="petisco")
    yard.command_bus().dispatch(NobodyListens())  # caught by the store: no UnroutableError
    yard.wait_until(lambda: yard.queue_counts(yard.store_queue)[yard.store_queue] == 1)


def test_declaring_is_idempotent_and_a_changed_queue_is_reported(yard: Yard) -> None:
    subscribers = [MessageSubscriber.from_message(UserCreated, [recording(Runs(), "send_mail_handler")])]
    yard.configure(subscribers)
    yard.configure(subscribers)
    with pytest.raises(TopologyMismatchError, match="x-message-ttl") as raised:
        yard.configure(subscribers, retry_ttl_ms=yard.retry_ttl_ms + 100)
    retry_queue = f"retry.{yard.queue_of(UserCreated, recording(Runs(), 'send_mail_handler'))}"
    assert retry_queue in str(raised.value) and "delete" in str(raised.value)  # how to fix it


def test_stop_lets_a_running_handler_finish(yard: Yard) -> None:
    started, finished = threading.Event(), threading.Event()
    consumers: list[MessageConsumer] = []

    def slow_handler(event: UserCreated) -> None:
        started.set()
        # Finish only once stop() has begun (polled, bounded): stop() must wait for us.
        deadline = time.monotonic() + 10
        while consumers[0].engine.is_running and time.monotonic() < deadline:
            time.sleep(0.005)
        finished.set()

    subscribers = [MessageSubscriber.from_message(UserCreated, [slow_handler])]
    yard.configure(subscribers)
    consumers.append(yard.consumer(subscribers))
    yard.event_bus().publish(UserCreated(user_id=Uuid.v4()))
    assert started.wait(10)
    consumers[0].stop(timeout=10)
    assert finished.is_set()
    yard.recorder.assert_handled(UserCreated, times=1)
    queue = yard.queue_of(UserCreated, slow_handler)
    assert yard.queue_counts(queue, f"retry.{queue}") == {queue: 0, f"retry.{queue}": 0}
