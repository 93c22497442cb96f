"""Every error eventyard raises, in one tree.

    EventyardError
    ├── ConfigurationError        wrong set-up, found before any message moves
    │   ├── SubscriberError       a subscriber or handler that cannot be used
    │   ├── QueueNotFoundError    consuming a queue nobody declared
    │   └── TopologyMismatchError the broker holds a queue or exchange with other arguments
    ├── MessageDecodeError        a body that is not a valid eventyard / petisco message
    ├── InvalidHandlerResult      a handler returned neither success nor failure (its
    │                             message's failure, never raised to the caller)
    ├── BrokerError               the broker could not be reached or refused something
    │   ├── BrokerConnectionError cannot connect, or the connection was lost mid-operation
    │   ├── PublishNackedError    the broker refused (nacked) a published message
    │   ├── PublishTimeoutError   no confirm in time (a broker alarm blocked publishing, say)
    │   └── UnroutableError       a command that no queue receives
    └── ChaosConfigurationError   a chaos setting out of range (also a ConfigurationError)

Messages say what failed and what to do about it; passwords never appear in them.
"""

from __future__ import annotations


class EventyardError(Exception):
    """Base of every eventyard error."""


class ConfigurationError(EventyardError):
    """The application's set-up is wrong; found before any message moves."""


class SubscriberError(ConfigurationError):
    """A subscriber or handler cannot be used as given."""


class QueueNotFoundError(ConfigurationError):
    """A consumer asked for a queue the broker does not have."""


class TopologyMismatchError(ConfigurationError):
    """The broker already holds a queue or exchange declared with other arguments."""


class ChaosConfigurationError(ConfigurationError):
    """A chaos setting is out of range or malformed."""


class MessageDecodeError(EventyardError):
    """A message body cannot be decoded into a known, valid message."""


class InvalidHandlerResult(EventyardError):
    """A handler returned something that is neither success nor failure (a string, a number,
    an unawaited coroutine, a nested result): its message counts as failed."""


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
