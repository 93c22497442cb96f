"""The in-memory broker: RabbitMQ's routing, retry, dead-letter and store semantics in-process.

    from eventyard.memory import MemoryBroker, MemoryMessageConfigurer, MemoryMessageConsumer

    broker = MemoryBroker.virtual()       # retry delays pass instantly (tests, demos)
    MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
"""

from eventyard.memory.broker import MemoryBroker
from eventyard.memory.clock import Clock, RealClock, VirtualClock
from eventyard.memory.facades import (
    MemoryCommandBus,
    MemoryDomainEventBus,
    MemoryEventChaos,
    MemoryMessageConfigurer,
    MemoryMessageConsumer,
)
from eventyard.memory.inspection import QueuedMessage
from eventyard.memory.routing import topic_matches
from eventyard.memory.transport import MemoryDelivery, MemoryTransport

__all__ = [
    "Clock",
    "MemoryBroker",
    "MemoryCommandBus",
    "MemoryDelivery",
    "MemoryDomainEventBus",
    "MemoryEventChaos",
    "MemoryMessageConfigurer",
    "MemoryMessageConsumer",
    "MemoryTransport",
    "QueuedMessage",
    "RealClock",
    "VirtualClock",
    "topic_matches",
]
