"""The curated public API: every name exists, and the list changes only on purpose."""

from __future__ import annotations

import importlib

import pytest

import eventyard

CURATED = {
    "AsyncCommandBus", "AsyncDomainEventBus", "BrokerConnectionError", "BrokerError",
    "CallTimeoutError", "ChaosConfigurationError", "Command", "CommandBus", "ConfigurationError",
    "ConsumerEvent", "ConsumerSettings", "DomainEvent", "DomainEventBus", "Event", "EventChaos",
    "EventyardError", "InfoId", "InvalidHandlerResult", "InvalidMessageError", "Message",
    "MessageConfigurer", "MessageConsumer", "MessageDecodeError", "MessageSubscriber",
    "NotImplementedBroker", "PublishNackedError", "PublishTimeoutError", "QueueNotFoundError",
    "SimulatedChaosFailure", "SubscriberError", "TopologyMismatchError", "TopologyOptions",
    "UnroutableError", "Uuid", "broker_from_env",
    # Retry policies (issue 13)
    "HandlerTimeout", "RetryPolicy", "Unrecoverable",
    # Dead-letter queues found through the management API (issue 15)
    "ManagementApiError",
    # topology migrate refuses queues with consumers attached (issue 14)
    "QueueInUseError",
}


def test_all_is_exactly_the_curated_list() -> None:
    assert sorted(eventyard.__all__) == sorted(CURATED)
    assert len(eventyard.__all__) == len(set(eventyard.__all__))


@pytest.mark.parametrize("module", ["eventyard", "eventyard.memory", "eventyard.testing",
                                    "eventyard.extra.rabbitmq"])
def test_every_exported_name_exists(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in imported.__all__ if not hasattr(imported, name)]
    assert missing == []


def test_the_seeds_import_path_gives_the_rabbitmq_objects_themselves() -> None:
    import eventyard.extra.rabbitmq as extra
    import eventyard.rabbitmq as rabbitmq

    assert extra.__all__ == rabbitmq.__all__
    assert all(getattr(extra, name) is getattr(rabbitmq, name) for name in rabbitmq.__all__)


def test_event_is_the_base_of_domain_events() -> None:
    # The seed annotates a domain event handler with it: petisco's base class of domain events.
    from eventyard import Command, DomainEvent, Event

    assert Event is DomainEvent
    assert not issubclass(Command, Event)


def test_memory_names_mirror_the_rabbitmq_ones() -> None:
    import eventyard.memory as memory

    for name in ("MessageConfigurer", "DomainEventBus", "CommandBus", "MessageConsumer", "EventChaos"):
        assert hasattr(memory, f"Memory{name}")
    assert issubclass(memory.MemoryMessageConsumer, eventyard.MessageConsumer)
    assert issubclass(memory.MemoryEventChaos, eventyard.EventChaos)


def test_the_seed_snippet_runs_on_the_memory_broker() -> None:
    from meiga import Error, Result, isSuccess

    from eventyard import DomainEvent, MessageSubscriber, Uuid
    from eventyard.memory import (
        MemoryBroker,
        MemoryDomainEventBus,
        MemoryMessageConfigurer,
        MemoryMessageConsumer,
        VirtualClock,
    )

    class UserCreated(DomainEvent):
        user_id: Uuid

    seen: list[DomainEvent] = []

    def send_mail_handler(domain_event: DomainEvent) -> Result[bool, Error]:
        seen.append(domain_event)
        return isSuccess

    subscribers = [MessageSubscriber.from_message(UserCreated(user_id=Uuid.v4()), [send_mail_handler])]
    with MemoryBroker(clock=VirtualClock()) as connector:
        MemoryMessageConfigurer(connector, "acme", "registration").configure_subscribers(subscribers)
        consumer = MemoryMessageConsumer(connector, "acme", "registration", 5)
        consumer.add_subscribers(subscribers)
        consumer.start()
        MemoryDomainEventBus(connector, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        connector.wait_until_idle(5)
        consumer.stop()
    assert len(seen) == 1 and isinstance(seen[0], UserCreated)
