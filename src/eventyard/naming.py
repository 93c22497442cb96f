"""Every exchange, queue and routing-key name eventyard uses, as pure functions.

These names are a wire contract shared with petisco 2.x services and with operators' tooling:
unit tests pin them, and nothing else in eventyard builds a broker name by hand.

Words: ``org`` organisation, ``svc`` service, ``version`` message version, ``kind`` ``event`` or
``command``, ``name`` the dotted message name (``user.created``), ``handler`` the handler name.
"""

from __future__ import annotations

import re

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_VALID_WORD = re.compile(r"^[A-Za-z0-9_\-]+$")

STORE_QUEUE = "store"
STORE_BINDING_KEYS = ("*.*.*.event.*", "*.*.*.command.*")


def snake_words(class_name: str) -> list[str]:
    """Split ``UserCreated`` / ``HTTPRequestSent`` into lower-case words."""
    return [word.lower() for word in _CAMEL_BOUNDARY.split(class_name) if word]


def message_name(class_name: str) -> str:
    """``UserCreated`` -> ``user.created``: the message's ``type`` on the wire."""
    return ".".join(snake_words(class_name))


def snake_case(class_name: str) -> str:
    """``SendMailOnUserCreated`` -> ``send_mail_on_user_created``."""
    return "_".join(snake_words(class_name))


def name_word(name: str) -> str:
    """The dotted message name as one routing-key word: ``user.created`` -> ``user_created``."""
    return name.replace(".", "_")


def check_word(value: str, what: str) -> str:
    """Return ``value`` if it can be one word of a routing key; raise ``ValueError`` if not."""
    if not value or not _VALID_WORD.match(value):
        raise ValueError(
            f"{what} {value!r} cannot be used in RabbitMQ names: use letters, digits, '_' or '-'"
        )
    return value


def exchange(org: str, svc: str) -> str:
    """The main topic exchange of a service: ``acme.registration``."""
    return f"{org}.{svc}"


def retry_exchange(org: str, svc: str) -> str:
    """``retry.acme.registration``."""
    return f"retry.{org}.{svc}"


def dead_letter_exchange(org: str, svc: str) -> str:
    """``dead_letter.acme.registration``."""
    return f"dead_letter.{org}.{svc}"


def store_retry_exchange(org: str) -> str:
    """``retry.acme.store``."""
    return f"retry.{org}.store"


def store_dead_letter_exchange(org: str) -> str:
    """``dead_letter.acme.store``."""
    return f"dead_letter.{org}.store"


def routing_key(org: str, svc: str, version: int, kind: str, name: str) -> str:
    """``acme.registration.1.event.user_created``."""
    return f"{org}.{svc}.{version}.{kind}.{name_word(name)}"


def queue(org: str, svc: str, version: int, kind: str, name: str, handler: str) -> str:
    """A subscriber's queue ``Q``: ``acme.registration.1.event.user_created.send_mail_handler``."""
    return f"{routing_key(org, svc, version, kind, name)}.{handler}"


def retry_queue(queue_name: str) -> str:
    """``retry.Q``: where a failed message waits for the retry delay."""
    return f"retry.{queue_name}"


def dead_letter_queue(queue_name: str) -> str:
    """``dead_letter.Q``: where a message that ran out of retries is parked."""
    return f"dead_letter.{queue_name}"


def retry_key(queue_name: str) -> str:
    """Routing key that brings a message back to ``Q`` only: ``retry.Q``."""
    return f"retry.{queue_name}"


def dead_letter_key(queue_name: str) -> str:
    """Routing key of ``Q``'s dead letters: ``dead_letter.Q``."""
    return f"dead_letter.{queue_name}"


def is_dead_letter_queue(queue_name: str) -> bool:
    """True for ``dead_letter.Q`` names."""
    return queue_name.startswith("dead_letter.")


def subscriber_queue_of(dead_letter_queue_name: str) -> str:
    """``dead_letter.Q`` -> ``Q``; raise ``ValueError`` for another name."""
    if not is_dead_letter_queue(dead_letter_queue_name):
        raise ValueError(f"{dead_letter_queue_name!r} is not a dead-letter queue (dead_letter.*)")
    return dead_letter_queue_name[len("dead_letter.") :]
