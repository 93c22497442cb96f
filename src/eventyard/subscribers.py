"""Subscribers, their handlers, and the registry that checks them before anything runs.

A subscriber names the messages it reacts to and the handlers that run for them. Each
(message, handler) pair becomes one ``Subscription``: one queue with its own retries and dead
letters. No two handlers share a queue or a retry budget: the first all-messages handler (the
store) consumes the ``store`` queue, each further one a ``store.<handler>`` queue of its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eventyard import naming
from eventyard.errors import SubscriberError
from eventyard.messages import Command, DomainEvent, Message
from eventyard.outcomes import SUCCESS as SUCCESS  # re-exported: handler outcomes live there
from eventyard.outcomes import Outcome as Outcome
from eventyard.outcomes import outcome_of as outcome_of
from eventyard.outcomes import outcome_of_exception as outcome_of_exception
from eventyard.retry import RetryPolicy

Handler = Callable[[Any], Any]


class MessageSubscriber:
    """Reacts to messages. Build one with ``from_message`` / ``all_messages``, or subclass.

    A subclass implements ``subscribed_to()`` (message classes) and ``handle(message)``; its
    queue is named after the class in snake case (``SendMailOnUserCreated`` ->
    ``send_mail_on_user_created``).
    """

    def subscribed_to(self) -> Sequence[type[Message]]:
        """The message classes this subscriber reacts to; empty means every message."""
        raise NotImplementedError(f"{type(self).__name__} must implement subscribed_to()")

    def handle(self, message: Any) -> Any:
        """React to ``message``; return None/True/Success, or False/Failure/raise on failure."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle()")

    def handlers(self) -> list[tuple[str, Handler]]:
        """(name, callable) of each handler; the name is part of the queue name."""
        return [(naming.snake_case(type(self).__name__), self.handle)]

    def is_all_messages(self) -> bool:
        """True for a subscriber to every message (the store)."""
        return False

    #: The service that publishes the subscribed messages, when it is not the consuming service
    #: (a class subscriber sets it as a class attribute).
    publisher: str | None = None
    #: This subscriber's retry policy (None: the consumer's) and handler timeout in seconds
    #: (None: the consumer's); class attributes of a class subscriber.
    retry_policy: RetryPolicy | None = None
    handler_timeout: float | None = None

    @staticmethod
    def from_message(
        message: type[Message] | Message | Sequence[type[Message] | Message],
        handlers: Sequence[Handler] | Handler,
        *,
        publisher: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> MessageSubscriber:
        """A subscriber running each of ``handlers`` for a message class (or an instance's class).

        ``publisher`` names another service of the organisation whose message this is (billing
        reacting to registration's ``UserCreated``): the queues are that service's, as petisco
        names them, and this service's consumer consumes them beside its own. ``retry`` is
        its handlers' retry policy and ``timeout`` bounds each handler run, in seconds (both
        default to the consumer's).
        """
        messages = list(message) if isinstance(message, list | tuple) else [message]
        classes = [_message_class(m) for m in messages]
        if not classes:
            raise SubscriberError("from_message needs at least one message class")
        if publisher is not None:
            naming.check_word(publisher, "publisher", error=SubscriberError)
        subscriber = _FunctionSubscriber(classes, _handler_list(handlers), all_messages=False,
                                         publisher=publisher)
        subscriber.retry_policy = check_retry_policy(retry, "retry")
        subscriber.handler_timeout = check_timeout(timeout, "timeout")
        return subscriber

    @staticmethod
    def all_messages(handlers: Sequence[Handler] | Handler) -> MessageSubscriber:
        """A subscriber to every event and command (the store).

        The first store handler consumes the ``store`` queue; each further one gets a queue of
        its own, ``store.<handler>``, with its own retries and dead letters.
        """
        return _FunctionSubscriber([], _handler_list(handlers), all_messages=True)


class _FunctionSubscriber(MessageSubscriber):
    def __init__(self, classes: list[type[Message]], handlers: list[Handler], *,
                 all_messages: bool, publisher: str | None = None) -> None:
        self._classes = classes
        self._handlers = handlers
        self._all = all_messages
        self.publisher = publisher

    def subscribed_to(self) -> Sequence[type[Message]]:
        return list(self._classes)

    def handlers(self) -> list[tuple[str, Handler]]:
        return [(handler_name(h), h) for h in self._handlers]

    def is_all_messages(self) -> bool:
        return self._all

    def __repr__(self) -> str:
        target = "all messages" if self._all else ", ".join(c.__name__ for c in self._classes)
        names = ", ".join(handler_name(h) for h in self._handlers)
        return f"MessageSubscriber({target} -> {names})"


def check_retry_policy(policy: Any, what: str) -> RetryPolicy | None:
    """``policy`` if it is a ``RetryPolicy`` or None; ``SubscriberError`` if not."""
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise SubscriberError(f"{what} must be an eventyard.RetryPolicy or None, not {policy!r}")
    return policy


def check_timeout(timeout: Any, what: str) -> float | None:
    """``timeout`` in seconds if it is a positive, finite number or None; ``SubscriberError``
    if not."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            timeout > 0 and math.isfinite(timeout)):
        raise SubscriberError(f"{what} must be a number of seconds > 0, or None, not {timeout!r}")
    return float(timeout)


def _message_class(message: Any) -> type[Message]:
    if isinstance(message, type) and issubclass(message, Message):
        cls = message
    elif isinstance(message, Message):
        cls = type(message)
    else:
        raise SubscriberError(
            f"subscribe to a DomainEvent or Command class or instance, not {message!r}"
        )
    if cls in (Message, DomainEvent, Command) or not hasattr(cls, "message_kind"):
        raise SubscriberError(
            f"subscribe to your own DomainEvent or Command subclass, not {cls.__name__}"
        )
    return cls


def _handler_list(handlers: Sequence[Handler] | Handler) -> list[Handler]:
    items: list[Handler] = (
        list(handlers) if isinstance(handlers, list | tuple) else [handlers]  # type: ignore[list-item]
    )
    if not items:
        raise SubscriberError("a subscriber needs at least one handler")
    for handler in items:
        if not callable(handler):
            raise SubscriberError(f"handler {handler!r} is not callable")
        handler_name(handler)
    return items


def handler_name(handler: Handler) -> str:
    """The name a handler gives its queue: a function's name or a callable class in snake case."""
    if inspect.isfunction(handler) or inspect.ismethod(handler):
        name = handler.__name__
    elif hasattr(handler, "__call__") and not inspect.isroutine(handler):  # noqa: B004
        name = naming.snake_case(type(handler).__name__)
    else:
        name = getattr(handler, "__name__", "")
    if name == "<lambda>" or not name:
        raise SubscriberError(
            f"handler {handler!r} has no usable name; define it with def so its queue has a name"
        )
    return naming.check_word(name, "handler name", error=SubscriberError)


def is_async_handler(handler: Handler) -> bool:
    """True when calling ``handler`` returns a coroutine."""
    call = getattr(handler, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(handler) or (
        call is not None and inspect.iscoroutinefunction(call)
    )


@dataclass(frozen=True, slots=True)
class Subscription:
    """One handler of one message (or of every message, for the store): one queue.

    ``publisher`` is the service whose message it is when another service consumes it;
    ``store_suffix`` tells a further store handler's queue (``store.<handler>``) from the
    organisation's ``store`` (empty); ``retry`` and ``timeout`` are the subscriber's own (None:
    the consumer's).
    """

    message_class: type[Message] | None
    handler_name: str
    handlers: tuple[Handler, ...]
    publisher: str | None = None
    store_suffix: str = ""
    retry: RetryPolicy | None = None
    timeout: float | None = None

    @property
    def is_store(self) -> bool:
        """True for an all-messages (store) subscription."""
        return self.message_class is None


def _check_route(routes: dict[tuple[str | None, str, int, str], type[Message]],
                 publisher: str | None, cls: type[Message]) -> None:
    """Refuse a message name RabbitMQ cannot carry, and two names that make one routing key."""
    name = naming.check_message_name(cls.message_name, cls.__name__, error=SubscriberError)
    word = naming.name_word(name)
    other = routes.setdefault((publisher, cls.message_kind, cls.message_version, word), cls)
    if other.message_name != name:
        raise SubscriberError(
            f"{other.__name__} ({other.message_name!r}) and {cls.__name__} ({name!r}) make the "
            f"same routing-key word {word!r}: they would share queues and each would fail to "
            "decode the other's messages; set another message_name on one of them")


def subscriptions_of(subscribers: Iterable[MessageSubscriber]) -> list[Subscription]:
    """Expand subscribers into subscriptions and check them.

    Raise ``SubscriberError`` for a command with more than one handler, two handlers that
    would share a queue name, a message name RabbitMQ cannot carry, or two message classes
    whose names make one routing key (``OrderPlaced`` and ``Order_Placed``).
    """
    found: dict[tuple[str | None, str, int, str, str], Subscription] = {}
    routes: dict[tuple[str | None, str, int, str], type[Message]] = {}
    command_handlers: dict[tuple[str | None, str, int], list[str]] = {}
    store: dict[str, Subscription] = {}
    for subscriber in subscribers:
        if not isinstance(subscriber, MessageSubscriber):
            raise SubscriberError(f"{subscriber!r} is not a MessageSubscriber")
        pairs = subscriber.handlers()
        policy = check_retry_policy(subscriber.retry_policy, f"{subscriber!r}: retry_policy")
        timeout = check_timeout(subscriber.handler_timeout, f"{subscriber!r}: handler_timeout")
        if subscriber.is_all_messages():
            if policy is not None and not policy.is_default:
                raise SubscriberError(
                    f"{subscriber!r}: the store retries after its retry queue's TTL; a retry "
                    "policy with delays of its own is for subscribers of given messages")
            for name, handler in pairs:
                if name in store:
                    raise SubscriberError(
                        f"two store handlers are named {name!r}; they would share one queue: "
                        "rename one")
                store[name] = Subscription(None, name, (handler,),
                                           store_suffix=name if store else "", retry=policy,
                                           timeout=timeout)
            continue
        classes = subscriber.subscribed_to()
        if not classes:
            raise SubscriberError(f"{subscriber!r} subscribes to no message")
        publisher = subscriber.publisher
        if publisher is not None:
            naming.check_word(publisher, f"{subscriber!r}: publisher", error=SubscriberError)
        for cls in classes:
            cls = _message_class(cls)
            _check_route(routes, publisher, cls)
            for name, handler in pairs:
                key = (publisher, cls.message_kind, cls.message_version, cls.message_name, name)
                if key in found:
                    raise SubscriberError(
                        f"two handlers named {name!r} subscribe to {cls.message_name} "
                        f"v{cls.message_version}; they would share one queue: rename one"
                    )
                found[key] = Subscription(cls, name, (handler,), publisher=publisher,
                                          retry=policy, timeout=timeout)
                if issubclass(cls, Command):
                    command_handlers.setdefault(
                        (publisher, cls.message_name, cls.message_version), []
                    ).append(name)
    for (_, name, version), handlers in command_handlers.items():
        if len(handlers) > 1:
            raise SubscriberError(
                f"command {name} v{version} has {len(handlers)} handlers ({', '.join(handlers)}); "
                "a command must have exactly one"
            )
    return [*found.values(), *store.values()]
