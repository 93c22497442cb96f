"""The JSON envelope of a message, both ways; the only module that knows its shape.

The envelope is compatible with petisco 2.x, so services on either can share a broker::

    {"data": {"id": "...", "type": "user.created", "type_message": "domain_event",
              "version": 1, "occurred_on": "2026-11-27 10:15:02.123456",
              "attributes": {...}, "meta": {}}}
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from eventyard.errors import InvalidMessageError, MessageDecodeError
from eventyard.messages import Command, DomainEvent, Message, MessageKind

OCCURRED_ON_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_WIRE_KIND: dict[MessageKind, str] = {"event": "domain_event", "command": "command"}
_KIND_OF_WIRE: dict[str, MessageKind] = {"domain_event": "event", "event": "event",
                                         "command": "command"}
_VERSION_MIN, _VERSION_MAX = -(2**31), 2**31 - 1
_SHOWN = 120  # characters of a hostile value an error message repeats
_PROBLEMS_SHOWN = 10


class MessageRegistry:
    """Known message classes by (name, version); every subclass registers itself here."""

    def __init__(self) -> None:
        self._classes: dict[tuple[str, int], type[Message]] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[Message]) -> None:
        """Make ``cls`` the class decoded for its name and version (the latest one wins)."""
        with self._lock:
            self._classes[(cls.message_name, cls.message_version)] = cls

    def find(self, name: str, version: int) -> type[Message] | None:
        """The class known for ``name`` and ``version``, or None."""
        return self._classes.get((name, version))


default_registry = MessageRegistry()


def envelope(message: Message) -> dict[str, Any]:
    """The envelope of ``message`` as a dict."""
    return {
        "data": {
            "id": message.get_message_id(),
            "type": message.get_message_name(),
            "type_message": _WIRE_KIND[message.get_message_kind()],
            "version": message.get_message_version(),
            "occurred_on": _format_occurred_on(message.get_occurred_on()),
            "attributes": message.get_attributes(),
            "meta": message.get_meta(),
        }
    }


def encode(message: Message) -> bytes:
    """``message`` as UTF-8 JSON bytes."""
    if not isinstance(message, Message):
        raise InvalidMessageError(f"expected a DomainEvent or Command, got {type(message).__name__}")
    # Private attributes read from their dict at once: pydantic's attribute lookup for them
    # costs more than the rest of encoding.
    private = message.__pydantic_private__ or {}
    if private.get("_foreign") is not None:
        return pydantic_core.to_json(envelope(message))
    message_id, occurred_on = private.get("_message_id"), private.get("_occurred_on")
    # One pass: pydantic_core serialises the model itself (JSON mode) inside the envelope,
    # without an intermediate dict of its fields or a copy of its meta.
    cls = type(message)
    return pydantic_core.to_json({"data": {
        "id": message_id if message_id is not None else message.get_message_id(),
        "type": cls.message_name,
        "type_message": _WIRE_KIND[cls.message_kind],
        "version": cls.message_version,
        "occurred_on": _format_occurred_on(
            occurred_on if occurred_on is not None else message.get_occurred_on()),
        "attributes": message,
        "meta": private.get("_meta") or {},
    }})


def _format_occurred_on(value: datetime) -> str:
    # isoformat(" ", "microseconds") is OCCURRED_ON_FORMAT for naive datetimes, 5x faster.
    return value.isoformat(" ", "microseconds") if value.tzinfo is None else (
        value.strftime(OCCURRED_ON_FORMAT))


def _parse_occurred_on(value: Any) -> datetime:
    if not isinstance(value, str):
        raise MessageDecodeError(f"'occurred_on' must be a string, got {_show(value)}")
    if len(value) == 26 and value[10] == " " and value[19] == ".":
        # The usual "%Y-%m-%d %H:%M:%S.%f": fromisoformat reads it as strptime would, 20x faster.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    for fmt in (OCCURRED_ON_FORMAT, "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    except ValueError:
        raise MessageDecodeError(f"'occurred_on' {_show(value)} is not a date") from None
    except OverflowError:  # 0001-01-01 at UTC+1 is before the first day a datetime holds
        raise MessageDecodeError(f"'occurred_on' {_show(value)} is out of range") from None
    return parsed


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _show(value: Any) -> str:
    """``value`` for an error message, cut short: bodies come from anyone."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else "(a huge number)"
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


def decode(
    body: bytes | str,
    *,
    expected: type[Message] | None = None,
    registry: MessageRegistry = default_registry,
    allow_unknown: bool = False,
) -> Message:
    """Decode ``body`` into its typed message class.

    With ``expected``, the body must be that message (name and version). Without it, the class is
    found in ``registry``; an unknown type raises, or with ``allow_unknown`` becomes a generic
    ``DomainEvent`` / ``Command`` that keeps its name, version and attributes.
    Raise ``MessageDecodeError`` saying what is wrong, whatever the body holds (a date out of
    range, nesting beyond any limit, bytes that are not UTF-8); never return a half-built message.
    """
    try:
        return _decode(body, expected, registry, allow_unknown)
    except MessageDecodeError:
        raise
    except RecursionError:
        raise MessageDecodeError("body is nested too deeply to decode") from None
    except Exception as error:  # whatever else a hostile body provokes is still a bad body
        raise MessageDecodeError(
            f"body cannot be decoded: {type(error).__name__}: {_cut(str(error))}") from None


def _decode(body: bytes | str, expected: type[Message] | None, registry: MessageRegistry,
            allow_unknown: bool) -> Message:
    try:
        document = pydantic_core.from_json(body)
    except ValueError as error:
        raise MessageDecodeError(f"body is not JSON: {error}") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise MessageDecodeError("body has no 'data' object (not an eventyard/petisco message)")
    name = data.get("type")
    if not isinstance(name, str) or not name:
        raise MessageDecodeError("'data.type' is missing or not a string")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not (
            _VERSION_MIN <= version <= _VERSION_MAX):
        raise MessageDecodeError(f"'data.version' must be an integer, got {_show(version)}")
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict):
        raise MessageDecodeError("'data.attributes' must be an object")
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise MessageDecodeError("'data.meta' must be an object")
    wire_kind = data.get("type_message")
    kind = _KIND_OF_WIRE.get(wire_kind) if isinstance(wire_kind, str) else None
    if wire_kind is not None and kind is None:
        raise MessageDecodeError(
            f"'data.type_message' {_show(wire_kind)} is not domain_event/command")

    cls = expected if expected is not None else registry.find(name, version)
    if expected is not None and (name, version) != (expected.message_name, expected.message_version):
        raise MessageDecodeError(
            f"expected {expected.message_name} v{expected.message_version}, "
            f"got {_cut(name)} v{version}"
        )
    if cls is not None and kind is not None and cls.message_kind != kind:
        if expected is None and allow_unknown:
            cls = None  # another service's message of the same name: keep it generic
        else:
            raise MessageDecodeError(f"{name} v{version} is a {cls.message_kind}, body says {kind}")
    if cls is None and not allow_unknown:
        raise MessageDecodeError(f"unknown message type {_show(name)} version {version}")

    message: Message
    try:
        if cls is None:
            message = (Command if kind == "command" else DomainEvent)()
            message._foreign = (name, version, attributes)
        else:
            # Not cls.model_validate: Message defines __init__, so pydantic would call it and
            # validate a second time. The base __init__ validates once, into the new instance.
            message = cls.__new__(cls)
            BaseModel.__init__(message, **attributes)
    except ValidationError as error:
        if expected is None and allow_unknown:
            # A subscriber to every message (the store) keeps what a class of the same name
            # here cannot validate (another service's or version's shape), rather than lose it.
            message = (Command if kind == "command" else DomainEvent)()
            message._foreign = (name, version, attributes)
            return _finish(message, data, meta)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in error.errors()[:_PROBLEMS_SHOWN]
        )
        raise MessageDecodeError(f"{name} v{version} attributes are invalid: {problems}") from None
    return _finish(message, data, meta)


def _finish(message: Message, data: dict[str, Any], meta: dict[str, Any]) -> Message:
    private = message.__pydantic_private__
    assert private is not None
    message_id = data.get("id")
    if message_id is not None:
        if not isinstance(message_id, str):
            raise MessageDecodeError(f"'data.id' must be a string, got {_show(message_id)}")
        private["_message_id"] = message_id
    if "occurred_on" in data:
        private["_occurred_on"] = _parse_occurred_on(data["occurred_on"])
    private["_meta"] = dict(meta)
    return message
