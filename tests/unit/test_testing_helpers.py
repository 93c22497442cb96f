"""eventyard.testing: the recorder's asserts and the publish capture."""

from __future__ import annotations

import pytest

from contract.samples import PersistUser, UserCreated
from eventyard import CommandBus, DomainEventBus, MessageSubscriber, Uuid
from eventyard.consuming import ConsumerEvent
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer, MemoryMessageConsumer, VirtualClock
from eventyard.testing import MessageRecorder, capturing_broker


def send_mail_handler(event: UserCreated) -> None:
    return None


def test_capturing_broker_records_what_buses_publish() -> None:
    captured = capturing_broker()
    event = UserCreated(user_id=Uuid.v4())
    DomainEventBus(captured, "acme", "registration").publish([event, UserCreated(user_id=Uuid.v4())])
    CommandBus(captured, "acme", "registration").dispatch(PersistUser(user_id=Uuid.v4()))
    captured.recorder.assert_published(UserCreated, times=2)
    captured.recorder.assert_published(PersistUser, times=1)
    first = captured.published[0]  # decoded by the registry: the latest UserCreated class wins
    assert (first.get_message_id(), first.get_attributes()) == (event.get_message_id(),
                                                                event.get_attributes())
    with pytest.raises(AssertionError, match="expected UserCreated to be published 3 time"):
        captured.recorder.assert_published(UserCreated, times=3)
    captured.inner.loop_thread.stop()


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
        captured = recorder.watch(broker)
        MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
        consumer = MemoryMessageConsumer(broker, "acme", "registration")
        consumer.add_observer(recorder)
        consumer.add_subscribers(subscribers)
        consumer.start()
        DomainEventBus(captured, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        recorder.wait_until_handled(UserCreated, handler=send_mail_handler, timeout=5)
        broker.wait_until_idle(5)
        consumer.stop()
    recorder.assert_published(UserCreated, times=1)
    recorder.assert_handled(UserCreated, times=1)
    recorder.assert_nothing_dead_lettered()


def store_handler(message: object) -> None:
    return None


def test_the_recorder_knows_which_handler_consumes_which_queue_the_store_included() -> None:
    recorder = MessageRecorder()
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler]),
                   MessageSubscriber.all_messages([store_handler])]
    with MemoryBroker(clock=VirtualClock()) as broker:
        MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
        consumer = recorder.watch(MemoryMessageConsumer(broker, "acme", "registration"))
        consumer.add_subscribers(subscribers)
        consumer.start()
        DomainEventBus(recorder.watch(broker), "acme", "registration").publish(
            UserCreated(user_id=Uuid.v4()))
        recorder.wait_until_handled(UserCreated, times=2, timeout=5)
        consumer.stop()
    recorder.assert_handled(UserCreated, times=1, handler=store_handler)  # its queue is "store"
    recorder.assert_handled(UserCreated, times=1, handler="send_mail_handler")
    recorder.assert_handled(times=0, handler="nobody")


def test_the_rabbitmq_classes_take_a_watched_connector() -> None:
    from eventyard.rabbitmq import (
        RabbitMqCommandBus,
        RabbitMqConnector,
        RabbitMqDomainEventBus,
        RabbitMqMessageConsumer,
    )

    recorder = MessageRecorder()
    connector = RabbitMqConnector(environ={"EVENTYARD_MESSAGE_BROKER": "notimplemented"})
    watched = recorder.watch(connector)
    try:
        RabbitMqDomainEventBus(watched, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        RabbitMqCommandBus(watched, "acme", "registration").dispatch([PersistUser(user_id=Uuid.v4())])
        consumer = recorder.watch(RabbitMqMessageConsumer(watched, "acme", "registration"))
        assert consumer.engine.settings.prefetch == connector.settings.prefetch_count
        assert watched.settings is connector.settings and watched.publishes_nowhere
    finally:
        connector.close()
    recorder.assert_published(UserCreated, times=1)
    recorder.assert_published(PersistUser, times=1)


def test_watching_a_bus_says_to_watch_its_broker() -> None:
    captured = capturing_broker()
    bus = DomainEventBus(captured, "acme", "registration")
    with pytest.raises(TypeError, match="watch the broker it is built on"):
        MessageRecorder().watch(bus)  # type: ignore[call-overload]
    captured.inner.loop_thread.stop()


def test_the_testing_helpers_keep_their_earlier_names() -> None:
    from eventyard import testing

    assert testing.RecordingBackend is testing.RecordingBroker
    assert testing.capturing_backend is capturing_broker


def test_the_example_of_docs_testing_runs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/testing.md", "exec", dont_inherit=True), namespace)
    test = namespace["test_a_failing_mail_ends_in_the_dead_letter_queue"]
    assert callable(test)
    test()
