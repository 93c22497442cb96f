"""``eventyard.rabbitmq`` under the seed's import path (``petisco.extra.rabbitmq``).

The same objects, not copies: ``eventyard.extra.rabbitmq.RabbitMqConnector is
eventyard.rabbitmq.RabbitMqConnector``.
"""

from eventyard.rabbitmq import (
    AsyncRabbitMqCommandBus,
    AsyncRabbitMqDomainEventBus,
    AsyncRabbitMqMessageConsumer,
    ConnectionSettings,
    RabbitMqCommandBus,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqEventChaos,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
    RabbitMqTransport,
)

__all__ = [
    "AsyncRabbitMqCommandBus",
    "AsyncRabbitMqDomainEventBus",
    "AsyncRabbitMqMessageConsumer",
    "ConnectionSettings",
    "RabbitMqCommandBus",
    "RabbitMqConnector",
    "RabbitMqDomainEventBus",
    "RabbitMqEventChaos",
    "RabbitMqMessageConfigurer",
    "RabbitMqMessageConsumer",
    "RabbitMqTransport",
]
