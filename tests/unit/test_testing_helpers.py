"""eventyard.testing: the recorder's asserts and the publish capture."""

from __future__ import annotations

import pytest

from contract.samples import PersistUser, UserCreated
from eventyard import CommandBus, DomainEventBus, MessageSubscriber, Uuid
from eventyard.consuming import ConsumerEvent
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer, MemoryMessageConsumer, VirtualClock
from eventyard.testing import MessageRecorder, capturing_backend


def send_mail_handler(event: UserCreated) -> None:
    return None


def test_capturing_backend_records_what_buses_publish() -> None:
    backend = capturing_backend()
    event = UserCreated(user_id=Uuid.v4())
    DomainEventBus(backend, "acme", "registration").publish([event, UserCreated(user_id=Uuid.v4())])
    CommandBus(backend, "acme", "registration").dispatch(PersistUser(user_id=Uuid.v4()))
    backend.recorder.assert_published(UserCreated, times=2)
    backend.recorder.assert_published(PersistUser, times=1)
    first = backend.published[0]  # decoded by the registry: the latest UserCreated class wins
    assert (first.get_message_id(), first.get_attributes()) == (event.get_message_id(),
                                                                event.get_attributes())
    with pytest.raises(AssertionError, match="expected UserCreated to be published 3 time"):
        backend.recorder.assert_published(UserCreated, times=3)
    backend.inner.loop_thread.stop()


def test_recorder_asserts_on_consumer_events() -> None:
    recorder = MessageRecorder()
    event = UserCreated(user_id=Uuid.v4())
    recorder(ConsumerEvent("handled", "acme.registration.1.event.user_created.send_mail_handler",
                           event, 0))
    recorder(ConsumerEvent("dead_lettered", "store", event, 5))
    recorder.assert_handled(UserCreated, times=1, handler=send_mail_handler)
    recorder.assert_handled(UserCreated, times=0, handler="other_handler")
    recorder.assert_dead_lettered(UserCreated, times=1, handler="store")
    with pytest.raises(AssertionError, match="expected PersistUser to be handled, but it never was"):
        recorder.assert_handled(PersistUser)
    with pytest.raises(AssertionError, match="dead-lettered 0 time"):
        recorder.assert_nothing_dead_lettered()
    with pytest.raises(TimeoutError, match="condition not met"):
        recorder.wait_until_handled(PersistUser, timeout=0.01)
    recorder.clear()
    assert recorder.events() == []


def test_watching_a_memory_broker_end_to_end() -> None:
    recorder = MessageRecorder()
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
    with MemoryBroker(clock=VirtualClock()) as broker:
        backend = recorder.watch(broker)
        MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
        consumer = MemoryMessageConsumer(broker, "acme", "registration")
        consumer.add_observer(recorder)
        consumer.add_subscribers(subscribers)
        consumer.start()
        DomainEventBus(backend, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        recorder.wait_until_handled(UserCreated, handler=send_mail_handler, timeout=5)
        broker.wait_until_idle(5)
        consumer.stop()
    recorder.assert_published(UserCreated, times=1)
    recorder.assert_handled(UserCreated, times=1)
    recorder.assert_nothing_dead_lettered()
