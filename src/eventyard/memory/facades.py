"""The seed's classes on the in-memory broker: same names as the RabbitMQ ones, ``Memory*``."""

from __future__ import annotations

from eventyard.buses import CommandBus, DomainEventBus, MessageConfigurer, MessageConsumer
from eventyard.chaos import EventChaos
from eventyard.memory.broker import MemoryBroker


class MemoryMessageConfigurer(MessageConfigurer):
    """Declares a service's exchanges, queues and bindings on a ``MemoryBroker``."""

    connector: MemoryBroker


class MemoryDomainEventBus(DomainEventBus):
    """Publishes domain events to a ``MemoryBroker``. Thread-safe."""

    connector: MemoryBroker


class MemoryCommandBus(CommandBus):
    """Dispatches commands to a ``MemoryBroker``; ``UnroutableError`` if no queue takes one."""

    connector: MemoryBroker


class MemoryMessageConsumer(MessageConsumer):
    """Consumes a service's subscriber queues on a ``MemoryBroker`` (``start``/``stop``)."""

    connector: MemoryBroker


class MemoryEventChaos(EventChaos):
    """Chaos (simulated nacks, delays, failures) for a ``MemoryMessageConsumer``."""
