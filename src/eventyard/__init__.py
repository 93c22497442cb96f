"""eventyard: event-driven services on RabbitMQ, with an in-memory broker of the same behaviour."""

from eventyard.buses import (
    CommandBus,
    DomainEventBus,
    MessageConfigurer,
    MessageConsumer,
    NotImplementedBroker,
    broker_from_env,
)
from eventyard.chaos import EventChaos
from eventyard.consuming import ConsumerEvent, ConsumerSettings
from eventyard.errors import (
    BrokerConnectionError,
    BrokerError,
    CallTimeoutError,
    ChaosConfigurationError,
    ConfigurationError,
    EventyardError,
    HandlerTimeout,
    InvalidHandlerResult,
    InvalidMessageError,
    ManagementApiError,
    MessageDecodeError,
    PublishNackedError,
    PublishTimeoutError,
    QueueInUseError,
    QueueNotFoundError,
    SimulatedChaosFailure,
    SubscriberError,
    TopologyMismatchError,
    Unrecoverable,
    UnroutableError,
)
from eventyard.messages import Command, DomainEvent, InfoId, Message, Uuid
from eventyard.publishing import AsyncCommandBus, AsyncDomainEventBus
from eventyard.retry import RetryPolicy
from eventyard.subscribers import MessageSubscriber
from eventyard.topology import TopologyOptions

# The seed annotates handlers with ``Event``, petisco's name for the base of domain events.
Event = DomainEvent

__all__ = [
    "AsyncCommandBus",
    "AsyncDomainEventBus",
    "BrokerConnectionError",
    "BrokerError",
    "CallTimeoutError",
    "ChaosConfigurationError",
    "Command",
    "CommandBus",
    "ConfigurationError",
    "ConsumerEvent",
    "ConsumerSettings",
    "DomainEvent",
    "DomainEventBus",
    "Event",
    "EventChaos",
    "EventyardError",
    "HandlerTimeout",
    "InfoId",
    "InvalidHandlerResult",
    "InvalidMessageError",
    "ManagementApiError",
    "Message",
    "MessageConfigurer",
    "MessageConsumer",
    "MessageDecodeError",
    "MessageSubscriber",
    "NotImplementedBroker",
    "PublishNackedError",
    "PublishTimeoutError",
    "QueueInUseError",
    "QueueNotFoundError",
    "RetryPolicy",
    "SimulatedChaosFailure",
    "SubscriberError",
    "TopologyMismatchError",
    "TopologyOptions",
    "Unrecoverable",
    "UnroutableError",
    "Uuid",
    "broker_from_env",
]
