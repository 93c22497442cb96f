"""Every error eventyard raises, in one tree.

    EventyardError
    ├── ConfigurationError        wrong set-up or argument, found before any message moves
    │   ├── SubscriberError       a subscriber or handler that cannot be used
    │   ├── QueueNotFoundError    a queue the broker does not have (consumed, inspected, requeued)
    │   ├── TopologyMismatchError the broker holds a queue or exchange with other arguments
    │   └── ChaosConfigurationError  a chaos setting out of range
    ├── InvalidMessageError       a message, or a value for one, that cannot be built or sent
    │                             (also a TypeError and a ValueError, as Python's checks are)
    ├── MessageDecodeError        a body that is not a valid eventyard / petisco message
    ├── InvalidHandlerResult      a handler returned neither success nor failure (its
    │                             message's failure, never raised to the caller)
    ├── SimulatedChaosFailure     the handler failure chaos pretends (a message's failure too)
    ├── Unrecoverable             raised by a handler: its message is dead-lettered at once
    ├── HandlerTimeout            a handler ran past its timeout (its message's failure; also
    │                             a TimeoutError)
    ├── CallTimeoutError          a blocking call (sync API, wait until idle) ran out of time;
    │                             its work was cancelled (also a TimeoutError)
    ├── QueueInUseError           a queue to be replaced (topology migrate) has consumers
    └── BrokerError               the broker could not be reached or refused something
        ├── BrokerConnectionError cannot connect, or the connection was lost mid-operation
        ├── PublishNackedError    the broker refused (nacked) a published message
        ├── PublishTimeoutError   no confirm in time (a broker alarm blocked publishing, say)
        ├── UnroutableError       a command that no queue receives
        └── ManagementApiError    the management HTTP API is off, unreachable or refused

Messages say what failed and what to do about it; passwords never appear in them. A bug (in
eventyard or in the application) is not translated: it propagates as the exception it is, and
is never reported as a lost connection.
"""

from __future__ import annotations


class EventyardError(Exception):
    """Base of every eventyard error."""


class ConfigurationError(EventyardError):
    """The application's set-up, or an argument, is wrong; found before any message moves."""


class SubscriberError(ConfigurationError):
    """A subscriber or handler cannot be used as given."""


class QueueNotFoundError(ConfigurationError):
    """A queue the broker does not have: configure the subscribers first, or check the name."""


class TopologyMismatchError(ConfigurationError):
    """The broker already holds a queue or exchange declared with other arguments."""


class ChaosConfigurationError(ConfigurationError):
    """A chaos setting is out of range or malformed."""


class InvalidMessageError(EventyardError, TypeError, ValueError):
    """A message, or a value for one (a UUID, its meta), cannot be built or sent as given.

    Also a ``TypeError`` and a ``ValueError``: code written against Python's own checks, and
    pydantic validation (which turns a ``ValueError`` into a field error), keep working.
    """


class MessageDecodeError(EventyardError):
    """A message body cannot be decoded into a known, valid message."""


class InvalidHandlerResult(EventyardError):
    """A handler returned something that is neither success nor failure (a string, a number,
    an unawaited coroutine, a nested result): its message counts as failed."""


class SimulatedChaosFailure(EventyardError):
    """The handler failure chaos pretends happened: its message counts as failed."""


class Unrecoverable(EventyardError):
    """Raised by a handler (or carried by a meiga ``Failure``): retrying cannot help, so its
    message goes straight to the dead-letter queue with this reason."""


class HandlerTimeout(EventyardError, TimeoutError):
    """A handler ran longer than its subscriber's timeout: its message counts as failed."""


class CallTimeoutError(EventyardError, TimeoutError):
    """A blocking call did not finish in time; the work it started was cancelled."""


class QueueInUseError(EventyardError):
    """A queue that an operation must delete and declare again (``eventyard topology migrate``)
    has consumers attached: stop them first; nothing was changed on that queue."""


class BrokerError(EventyardError):
    """The broker could not be reached or refused an operation."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached, or the connection was lost mid-operation."""


class PublishNackedError(BrokerError):
    """The broker refused (nacked) a published message; it was not stored."""


class PublishTimeoutError(BrokerError):
    """A publish was not confirmed within its time limit; it may or may not be stored."""


class UnroutableError(BrokerError):
    """A published command reached no queue: nobody would ever handle it."""


class ManagementApiError(BrokerError):
    """The management HTTP API (queue discovery) is off, unreachable or refused the user."""
