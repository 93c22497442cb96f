"""Every exchange, queue and routing-key name eventyard uses, as pure functions.

These names are a wire contract shared with petisco 2.x services and with operators' tooling:
unit tests pin them, and nothing else in eventyard builds a broker name by hand.

Words: ``org`` organisation, ``svc`` service, ``version`` message version, ``kind`` ``event`` or
``command``, ``name`` the dotted message name (``user.created``), ``handler`` the handler name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from eventyard.errors import ConfigurationError

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_VALID_WORD = re.compile(r"[A-Za-z0-9_\-]+")
# What the AMQP client accepts in an exchange or queue name (RabbitMQ itself takes any UTF-8).
_VALID_NAME = re.compile(r"[A-Za-z0-9_\-.:@#,/+ ]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255  # a queue name or routing key: an AMQP short string
MAX_EXCHANGE_CHARS = 127  # the AMQP client refuses longer exchange names

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


def check_word(value: str, what: str, *,
               error: type[ConfigurationError] = ConfigurationError) -> str:
    """Return ``value`` if it can be one word of a routing key; raise ``error`` if not.

    A word is ASCII letters, digits, ``_`` and ``-``: nothing RabbitMQ's topic matching reads
    (``.``, ``*``, ``#``), nothing the AMQP client refuses in a queue name.
    """
    if not isinstance(value, str) or not _VALID_WORD.fullmatch(value):
        raise error(
            f"{what} {value!r} cannot be used in RabbitMQ names: use ASCII letters, digits, "
            "'_' or '-'")
    return value


def check_message_name(name: str, owner: str = "", *,
                       error: type[ConfigurationError] = ConfigurationError) -> str:
    """Return the dotted message ``name`` if it makes a valid routing-key word; raise if not.

    ``owner`` names the message class, for the error.
    """
    if not isinstance(name, str) or not _VALID_WORD.fullmatch(name_word(name)):
        of = f" of {owner}" if owner else ""
        raise error(
            f"message name {name!r}{of} cannot be used in RabbitMQ names: use ASCII letters, "
            "digits, '_', '-' and '.' (set message_name on the class to choose another)")
    return name


def check_name(name: str, kind: str) -> str:
    """Return ``name`` if RabbitMQ and the AMQP client accept it; ``ConfigurationError`` if not.

    ``kind`` is ``"exchange"`` (at most 127 characters: the AMQP client's limit), ``"queue"`` or
    ``"routing key"`` (at most 255 bytes). Exchange and queue names take only the characters
    the AMQP client allows; no name may hold a control character.
    """
    size = len(name.encode("utf-8", "surrogatepass"))
    limit = MAX_EXCHANGE_CHARS if kind == "exchange" else MAX_NAME_BYTES
    if size > limit:
        raise ConfigurationError(
            f"{kind} {name[:60]!r}... is {size} bytes long and the AMQP client takes at most "
            f"{limit}: use shorter organisation, service, message or handler names")
    if _CONTROL.search(name):
        raise ConfigurationError(f"{kind} {name!r} holds a control character")
    if kind != "routing key" and not _VALID_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{kind} {name!r} cannot be declared: the AMQP client takes only ASCII letters, "
            "digits, space and -_.:@#,/+ in exchange and queue names")
    return name


def check_names(*, exchanges: Iterable[str] = (), queues: Iterable[str] = (),
                routing_keys: Iterable[str] = ()) -> None:
    """Check every name of a topology before any of it is declared (``check_name``)."""
    for name in exchanges:
        check_name(name, "exchange")
    for name in queues:
        check_name(name, "queue")
    for key in routing_keys:
        check_name(key, "routing key")


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


@functools.lru_cache(maxsize=4096)
def routing_key(org: str, svc: str, version: int, kind: str, name: str) -> str:
    """``acme.registration.1.event.user_created``; ``ConfigurationError`` for a name RabbitMQ
    or the AMQP client would refuse (checked once per name: the result is cached)."""
    check_word(org, "organization")
    check_word(svc, "service")
    check_message_name(name)
    return check_name(f"{org}.{svc}.{version}.{kind}.{name_word(name)}", "routing key")


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


def delay_exchange(org: str, svc: str) -> str:
    """``delay.acme.registration``: the entry of the service's delay ladder."""
    return f"delay.{org}.{svc}"


def delay_queue(org: str, svc: str, level_ms: int) -> str:
    """``delay.acme.registration.1600``: one level of the ladder (its TTL, in ms, names it)."""
    return f"delay.{org}.{svc}.{level_ms}"


def delay_level_binding(level_ms: int) -> str:
    """What a ladder level receives from the delay exchange: ``1600.#``."""
    return f"{level_ms}.#"


def delay_key(level_ms: int, queue_name: str) -> str:
    """Routing key of a copy waiting ``level_ms`` for ``Q``: ``1600.retry.Q``. Dead-lettered
    with this key unchanged, it comes back to ``Q`` only (``delay_return_binding``)."""
    return f"{level_ms}.retry.{queue_name}"


def delay_return_binding(queue_name: str) -> str:
    """``Q``'s binding from its main exchange for copies back from any level: ``*.retry.Q``."""
    return f"*.retry.{queue_name}"


def is_delay_queue(queue_name: str) -> bool:
    """True for a queue where messages wait out a delay before they come back: ``retry.Q`` and
    the levels of a delay ladder (``delay.<org>.<svc>.<ms>``)."""
    return queue_name.startswith(("retry.", "delay."))


def is_dead_letter_queue(queue_name: str) -> bool:
    """True for ``dead_letter.Q`` names."""
    return queue_name.startswith("dead_letter.")


def subscriber_queue_of(dead_letter_queue_name: str) -> str:
    """``dead_letter.Q`` -> ``Q``; ``ConfigurationError`` for another name."""
    if not is_dead_letter_queue(dead_letter_queue_name):
        raise ConfigurationError(f"{dead_letter_queue_name!r} is not a dead-letter queue (dead_letter.*)")
    return dead_letter_queue_name[len("dead_letter.") :]
