"""Declaring and deleting a topology on the in-memory broker, as RabbitMQ does.

Declarations are applied one by one: what was declared before a clash stays declared. Deleting
a queue drops its messages; its consumers consume again once it is declared again.
"""

from __future__ import annotations

from eventyard import naming
from eventyard.declarations import Topology
from eventyard.errors import ConfigurationError, TopologyMismatchError
from eventyard.memory.routing import Exchange, Queue, argument_differences
from eventyard.memory.state import BrokerState


def declare(state: BrokerState, topology: Topology) -> None:
    """Create what ``topology`` describes, in order; ``TopologyMismatchError`` on a clash.

    As on RabbitMQ, what was declared before the clash stays declared.
    """
    with state.lock:
        naming.check_names(exchanges=(e.name for e in topology.exchanges),
                           queues=(q.name for q in topology.queues),
                           routing_keys=(b.routing_key for b in topology.bindings))
        for spec in topology.exchanges:
            found = state.exchanges.get(spec.name)
            if found is None:
                state.exchanges[spec.name] = Exchange(spec.name, spec.type, spec.durable)
            elif (found.type, found.durable) != (spec.type, spec.durable):
                raise TopologyMismatchError(
                    f"exchange {spec.name!r} exists as {found.type} (durable={found.durable}), "
                    f"declared as {spec.type} (durable={spec.durable}); delete it, or declare "
                    "it as it is")
        for qspec in topology.queues:
            existing = state.queues.get(qspec.name)
            if existing is None:
                state.add_queue(Queue(qspec.name, dict(qspec.arguments), qspec.durable))
                continue
            differences = argument_differences(existing.arguments, qspec.arguments)
            if existing.durable != qspec.durable:
                differences.append(f"durable: exists {existing.durable}, declared {qspec.durable}")
            if differences:
                raise TopologyMismatchError(
                    f"queue {qspec.name!r} exists with other arguments ({'; '.join(differences)}); "
                    "declare it with the arguments it has (same retry TTL and queue type), or "
                    "delete the queue (its messages are lost) and configure again."
                    + topology.mismatch_hint(qspec.name))
        for binding in topology.bindings:
            exchange = state.exchanges.get(binding.exchange)
            if exchange is None or binding.queue not in state.queues:
                missing = binding.exchange if exchange is None else binding.queue
                raise ConfigurationError(
                    f"cannot bind {binding.queue!r} to {binding.exchange!r}: {missing!r} does "
                    "not exist; declare it in the same topology")
            exchange.bindings.add((binding.routing_key, binding.queue))


def delete(state: BrokerState, topology: Topology) -> None:
    """Remove the queues (messages and consumers too) and exchanges of ``topology``."""
    with state.lock:
        names = {spec.name for spec in topology.queues}
        for name in names:
            state.remove_queue(name)
        for exchange in state.exchanges.values():
            exchange.bindings = {b for b in exchange.bindings if b[1] not in names}
        for spec in topology.exchanges:
            state.exchanges.pop(spec.name, None)
        state.changed()
