"""``MessageRecorder``: what was published, handled, retried and dead-lettered, with asserts.

``recorder.watch(consumer)`` makes it observe a consumer (any broker's, sync or async) and
know which handler consumes which queue, the store's included; ``recorder.watch(broker)``
wraps a broker (``RabbitMqConnector``, ``MemoryBroker``) so that the buses and consumers built
on it are seen too: ``RabbitMqDomainEventBus(recorder.watch(connector), "acme", "svc")``.
Thread-safe: consumers call it on their loop, tests read it from theirs; ``wait_for`` waits on a
condition with a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventyard.consuming import AsyncMessageConsumer, ConsumerEvent, EventKind
from eventyard.messages import Message
from eventyard.subscribers import Handler, handler_name

if TYPE_CHECKING:
    from eventyard.buses import Broker, MessageConsumer
    from eventyard.testing.capture import RecordingBroker

HandlerRef = str | Handler
Consumer = TypeVar("Consumer", "MessageConsumer", AsyncMessageConsumer)


def _is(message: Message | None, message_class: type[Message] | None) -> bool:
    if message is None:
        return message_class is None
    if message_class is None:
        return True
    return isinstance(message, message_class) or (
        message.get_message_name() == message_class.message_name
        and message.get_message_version() == message_class.message_version
        and message.get_message_kind() == message_class.message_kind)


def _on_queue(queue: str, name: str, names: dict[str, str]) -> bool:
    known = names.get(queue)
    if known is not None:
        return known == name
    return queue == name or queue.endswith("." + name)  # a consumer it was not told about


class MessageRecorder:
    """Records consumer events and published messages; ``assert_*`` helpers check them."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._events: list[ConsumerEvent] = []
        self._published: list[Message] = []
        self._consumers: list[AsyncMessageConsumer] = []

    # -- recording -------------------------------------------------------------------------
    def __call__(self, event: ConsumerEvent) -> None:
        """Observer entry point: record one consumer event."""
        with self._condition:
            self._events.append(event)
            self._condition.notify_all()

    def record_published(self, messages: Iterable[Message]) -> None:
        """Record messages a bus published."""
        with self._condition:
            self._published.extend(messages)
            self._condition.notify_all()

    @overload
    def watch(self, target: Consumer) -> Consumer: ...

    @overload
    def watch(self, target: Broker) -> RecordingBroker: ...

    def watch(self, target: Any) -> Any:
        """Observe ``target``: a consumer (returned as it is, now observed), or a broker
        (returned wrapped: what its publishers publish is recorded).

        Build buses on the wrapped broker, ``RabbitMqDomainEventBus(recorder.watch(connector),
        ...)``, rather than passing a bus here.
        """
        from eventyard.testing.capture import RecordingBroker

        engine = getattr(target, "engine", target)  # a sync consumer runs an async one
        if isinstance(engine, AsyncMessageConsumer):
            with self._condition:
                if engine not in self._consumers:
                    self._consumers.append(engine)
                    engine.add_observer(self)
            return target
        if callable(getattr(target, "publisher_transport", None)):
            return RecordingBroker(target, self)
        raise TypeError(
            f"watch() takes a consumer or a broker (RabbitMqConnector, MemoryBroker), not "
            f"{type(target).__name__}; for a bus, watch the broker it is built on: "
            "DomainEventBus(recorder.watch(connector), ...)")

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._condition:
            self._events.clear()
            self._published.clear()

    # -- queries ---------------------------------------------------------------------------
    def events(self, kind: EventKind | None = None) -> list[ConsumerEvent]:
        """Consumer events, oldest first (of one ``kind`` if given)."""
        with self._condition:
            return [e for e in self._events if kind is None or e.kind == kind]

    def published(self, message_class: type[Message] | None = None) -> list[Message]:
        """Messages published through a watched broker."""
        with self._condition:
            return [m for m in self._published if _is(m, message_class)]

    def _messages(self, kind: EventKind, message_class: type[Message] | None,
                  handler: HandlerRef | None) -> list[Message]:
        events = [e for e in self.events(kind)
                  if e.message is not None and _is(e.message, message_class)]
        if handler is not None:
            name = handler if isinstance(handler, str) else handler_name(handler)
            names = self._handler_names()
            events = [e for e in events if _on_queue(e.queue, name, names)]
        return [e.message for e in events if e.message is not None]

    def _handler_names(self) -> dict[str, str]:
        """Queue -> handler name, for every watched consumer (asked now: subscribers change)."""
        with self._condition:
            consumers = list(self._consumers)
        names: dict[str, str] = {}
        for consumer in consumers:
            names.update(consumer.handler_names())
        return names

    def handled(self, message_class: type[Message] | None = None, *,
                handler: HandlerRef | None = None) -> list[Message]:
        """Messages a handler processed successfully (per queue: one entry per subscriber)."""
        return self._messages("handled", message_class, handler)

    def retried(self, message_class: type[Message] | None = None, *,
                handler: HandlerRef | None = None) -> list[Message]:
        """Messages sent to a retry queue after a failure."""
        return self._messages("retried", message_class, handler)

    def dead_lettered(self, message_class: type[Message] | None = None, *,
                      handler: HandlerRef | None = None) -> list[Message]:
        """Messages that ran out of retries and went to a dead-letter queue."""
        return self._messages("dead_lettered", message_class, handler)

    def poison(self) -> list[ConsumerEvent]:
        """Undecodable deliveries that went straight to a dead-letter queue."""
        return self.events("poison")

    # -- asserts ---------------------------------------------------------------------------
    @staticmethod
    def _check(found: list[Message], what: str, message_class: type[Message] | None,
               times: int | None) -> None:
        name = message_class.__name__ if message_class else "any message"
        if times is None and not found:
            raise AssertionError(f"expected {name} to be {what}, but it never was")
        if times is not None and len(found) != times:
            raise AssertionError(f"expected {name} to be {what} {times} time(s), got {len(found)}: "
                                 f"{found!r}")

    def assert_published(self, message_class: type[Message] | None = None,
                         times: int | None = None) -> None:
        """``message_class`` was published (exactly ``times`` times, if given)."""
        self._check(self.published(message_class), "published", message_class, times)

    def assert_handled(self, message_class: type[Message] | None = None, times: int | None = None,
                       *, handler: HandlerRef | None = None) -> None:
        """``message_class`` was handled (by ``handler``; exactly ``times`` times, if given)."""
        self._check(self.handled(message_class, handler=handler), "handled", message_class, times)

    def assert_retried(self, message_class: type[Message] | None = None, times: int | None = None,
                       *, handler: HandlerRef | None = None) -> None:
        """``message_class`` was sent to a retry queue (exactly ``times`` times, if given)."""
        self._check(self.retried(message_class, handler=handler), "retried", message_class, times)

    def assert_dead_lettered(self, message_class: type[Message] | None = None,
                             times: int | None = None, *, handler: HandlerRef | None = None) -> None:
        """``message_class`` ended in a dead-letter queue (exactly ``times`` times, if given)."""
        self._check(self.dead_lettered(message_class, handler=handler), "dead-lettered",
                    message_class, times)

    def assert_nothing_dead_lettered(self) -> None:
        """No message was dead-lettered and no poison was seen."""
        self._check(self.dead_lettered(), "dead-lettered", None, 0)
        if self.poison():
            raise AssertionError(f"poison messages were dead-lettered: {self.poison()!r}")

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[MessageRecorder], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"condition not met after {timeout} s; recorded: "
                                   f"{[(e.kind, e.queue) for e in self._events]}")

    def wait_until_handled(self, message_class: type[Message] | None = None, times: int = 1, *,
                           handler: HandlerRef | None = None, timeout: float = 10.0) -> None:
        """Wait until ``message_class`` was handled at least ``times`` times."""
        self.wait_for(lambda r: len(r.handled(message_class, handler=handler)) >= times, timeout)
