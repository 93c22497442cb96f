"""The contract suite's fixture: the same behaviour tests on every broker.

A broker joins the suite by implementing ``BrokerUnderTest`` (what only that broker knows: its
backend, how to count and peek at queued messages, how to wait until nothing is in flight) and
adding a factory to ``BROKERS`` plus a param to ``BROKER_PARAMS``. ``Yard`` builds everything
else on top of the backend with the generic sync facades, so the tests never name a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import pytest

from eventyard import CommandBus, DomainEventBus, MessageConfigurer, MessageConsumer, TopologyOptions
from eventyard.buses import Broker
from eventyard.consuming import ConsumerSettings
from eventyard.memory import MemoryBroker, VirtualClock
from eventyard.messages import Message
from eventyard.ports import OutgoingMessage
from eventyard.subscribers import MessageSubscriber, handler_name, subscriptions_of
from eventyard.testing import MessageRecorder
from eventyard.topology import subscription_queue
from support import names


class Peeked(Protocol):
    """A message left in its queue: what a test may look at."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...


class BrokerUnderTest(Protocol):
    """What the suite needs from one broker."""

    name: str
    backend: Broker

    def queue_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Ready messages in each of ``queues`` (0 for a queue that does not exist)."""

    def messages_in(self, queue: str) -> list[Peeked]:
        """The messages ready in ``queue``, head first, left in place."""

    def settle(self, timeout: float, organization: str) -> None:
        """Wait until nothing is in flight or pending (retries included) for ``organization``."""

    def close(self) -> None:
        """Release the backend (after the yard has stopped consumers and deleted topology)."""


class MemoryUnderTest:
    """The in-memory broker, on a virtual clock: retry delays pass instantly."""

    name = "memory"

    def __init__(self) -> None:
        self.broker = MemoryBroker(clock=VirtualClock(autojump=True), name="eventyard-contract")
        self.backend: Broker = self.broker

    def queue_counts(self, queues: Sequence[str]) -> dict[str, int]:
        counts = self.broker.message_counts()
        return {queue: counts.get(queue, 0) for queue in queues}

    def messages_in(self, queue: str) -> list[Peeked]:
        return list(self.broker.messages(queue))

    def settle(self, timeout: float, organization: str) -> None:
        self.broker.wait_until_idle(timeout)

    def close(self) -> None:
        self.broker.close()


def _rabbitmq(request: pytest.FixtureRequest) -> BrokerUnderTest:
    from contract.rabbit import RabbitUnderTest

    return RabbitUnderTest(request.getfixturevalue("rabbit"))


BROKERS: dict[str, Callable[[pytest.FixtureRequest], BrokerUnderTest]] = {
    "memory": lambda request: MemoryUnderTest(),
    "rabbitmq": _rabbitmq,
}
BROKER_PARAMS = [pytest.param("memory", id="memory"),
                 pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq)]


class Yard:
    """One test's world on one broker: unique names, the seed's objects, waiting, teardown."""

    def __init__(self, broker: BrokerUnderTest) -> None:
        self.broker = broker
        self.backend = broker.backend
        self.organization = names.unique()
        self.service = "registration"
        self.retry_ttl_ms = 200
        self.store_queue = f"store_{self.organization}"  # the store is not per-org: keep tests apart
        self.recorder = MessageRecorder()
        self._configured: list[tuple[MessageConfigurer, list[MessageSubscriber]]] = []
        self._consumers: list[MessageConsumer] = []

    def options(self, **overrides: Any) -> TopologyOptions:
        """Topology options for this test (short retry TTL, its own store queue)."""
        values: dict[str, Any] = {"retry_ttl_ms": self.retry_ttl_ms, "store_queue": self.store_queue}
        return TopologyOptions(**{**values, **overrides})

    def configure(self, subscribers: Sequence[MessageSubscriber], **overrides: Any) -> MessageConfigurer:
        """Declare the topology of ``subscribers`` (deleted at teardown)."""
        configurer = MessageConfigurer(self.backend, self.organization, self.service,
                                       options=self.options(**overrides))
        self._configured.append((configurer, list(subscribers)))
        configurer.configure_subscribers(subscribers)
        return configurer

    def consumer(self, subscribers: Sequence[MessageSubscriber], max_retries: int = 5, *,
                 start: bool = True, **settings: Any) -> MessageConsumer:
        """A consumer of ``subscribers`` observed by ``self.recorder`` (stopped at teardown)."""
        consumer = MessageConsumer(self.backend, self.organization, self.service, max_retries,
                                   settings=ConsumerSettings(store_queue=self.store_queue, **settings),
                                   observers=[self.recorder])
        consumer.add_subscribers(subscribers)
        self._consumers.append(consumer)
        if start:
            consumer.start()
        return consumer

    def event_bus(self) -> DomainEventBus:
        """A domain-event bus of this test's service."""
        return DomainEventBus(self.backend, self.organization, self.service)

    def command_bus(self) -> CommandBus:
        """A command bus of this test's service."""
        return CommandBus(self.backend, self.organization, self.service)

    def queue_of(self, message_class: type[Message], handler: Callable[..., Any]) -> str:
        """The queue ``Q`` of ``handler`` subscribed to ``message_class``."""
        [subscription] = subscriptions_of([MessageSubscriber.from_message(message_class, [handler])])
        assert subscription.handler_name == handler_name(handler)
        return subscription_queue(self.organization, self.service, subscription, self.store_queue)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Publish raw bytes to the service's exchange, past every bus (poison)."""
        from eventyard import naming

        message = OutgoingMessage(naming.exchange(self.organization, self.service), routing_key, body)

        async def publish() -> None:
            await (await self.backend.publisher_transport()).publish([message])

        self.backend.loop_thread.run(publish())

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                events = [(e.kind, e.queue) for e in self.recorder.events()]
                raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; "
                                     f"consumer events: {events}")
            time.sleep(0.01)  # polling interval of a condition with a deadline, not a synchronisation

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until nothing more will happen (no delivery in flight, no retry pending)."""
        self.broker.settle(timeout, self.organization)

    def queue_counts(self, *queues: str) -> dict[str, int]:
        """Ready messages in ``queues``."""
        return self.broker.queue_counts(queues)

    def messages_in(self, queue: str) -> list[Peeked]:
        """Messages ready in ``queue``, left in place."""
        return self.broker.messages_in(queue)

    def teardown(self) -> None:
        """Stop consumers, delete what the test declared, release the broker."""
        try:
            for consumer in self._consumers:
                consumer.stop(timeout=5)
            for configurer, subscribers in self._configured:
                configurer.clear_subscribers(subscribers)
        finally:
            self.broker.close()


@pytest.fixture(params=BROKER_PARAMS)
def yard(request: pytest.FixtureRequest) -> Iterator[Yard]:
    """A fresh world on each broker of the suite."""
    world = Yard(BROKERS[request.param](request))
    try:
        yield world
    finally:
        world.teardown()
