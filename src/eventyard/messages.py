"""Messages: ``DomainEvent`` and ``Command`` (pydantic v2 models), ``Uuid`` and ``InfoId``.

A message's fields are its attributes on the wire. Its identity (id, name, version, kind,
``occurred_on``) and its ``meta`` live beside the fields, so a user's field may be called
``id`` or ``meta`` without clashing.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, PrivateAttr
from pydantic_core import core_schema

from eventyard import naming
from eventyard.errors import InvalidMessageError

MessageKind = Literal["event", "command"]
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Uuid(str):
    """A validated UUID kept as its canonical lower-case string."""

    __slots__ = ()

    def __new__(cls, value: str | uuid.UUID) -> Self:
        if type(value) is str and _CANONICAL_UUID.fullmatch(value):
            return super().__new__(cls, value)  # already canonical: skip parsing it again
        try:
            canonical = str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except (ValueError, AttributeError, TypeError):
            raise InvalidMessageError(f"{value!r} is not a valid UUID") from None
        return super().__new__(cls, canonical)

    @classmethod
    def v4(cls) -> Self:
        """A new random UUID."""
        return cls(uuid.uuid4())

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from_input = core_schema.no_info_plain_validator_function(cls._validate)
        return core_schema.json_or_python_schema(
            json_schema=core_schema.chain_schema([core_schema.str_schema(), from_input]),
            python_schema=from_input,
            serialization=core_schema.to_string_ser_schema(),
        )

    @classmethod
    def _validate(cls, value: Any) -> Uuid:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str | uuid.UUID):
            raise InvalidMessageError(f"expected a UUID string, got {type(value).__name__}")
        return cls(value)


class InfoId(BaseModel):
    """Ids that travel with a message in its meta, so the domain need not carry them."""

    model_config = ConfigDict(frozen=True)

    client_id: str | None = None
    user_id: str | None = None
    correlation_id: str | None = None
    ip: str | None = None


def utc_now() -> datetime:
    """Now, in UTC, without tzinfo (the wire carries naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def valid_id(value: Any) -> str | None:
    """``value`` if it can stand as a correlation or causation id, else None: a non-empty
    string that fits an AMQP short string (255 bytes), since it also travels as a property."""
    if not isinstance(value, str) or not value or len(value) > 255:
        return None
    try:
        return value if len(value.encode()) <= 255 else None
    except UnicodeEncodeError:  # a lone surrogate from a hostile body
        return None


class Message(BaseModel):
    """Base of every message. Subclass ``DomainEvent`` or ``Command``, not this class.

    ``message_version`` (default 1) and ``message_name`` (default: the class name in dotted
    snake case) may be set as class attributes.
    """

    model_config = ConfigDict(extra="ignore", validate_default=True)

    message_kind: ClassVar[MessageKind]
    message_name: ClassVar[str] = ""
    message_version: ClassVar[int] = 1

    # Set by __init__ (or by the codec from the wire): no default factory, so decoding a
    # message does not pay for an id and a timestamp it overwrites at once.
    _message_id: str | None = PrivateAttr(default=None)
    _occurred_on: datetime | None = PrivateAttr(default=None)
    _meta: dict[str, Any] = PrivateAttr(default_factory=dict)
    # Set only on generic messages decoded from a type no class is known for.
    _foreign: tuple[str, int, dict[str, Any]] | None = PrivateAttr(default=None)

    def __init__(self, *args: Any, **data: Any) -> None:
        if args:  # positional fields in declaration order, as in UserCreated(user_id, name)
            names = list(type(self).model_fields)
            if len(args) > len(names):
                raise InvalidMessageError(
                    f"{type(self).__name__} takes at most {len(names)} positional fields "
                    f"({', '.join(names) or 'none'}), got {len(args)}"
                )
            for name, value in zip(names, args, strict=False):
                if name in data:
                    raise InvalidMessageError(f"{type(self).__name__} got {name!r} twice")
                data[name] = value
        super().__init__(**data)
        self._message_id = str(uuid.uuid4())
        self._occurred_on = utc_now()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "message_name" not in cls.__dict__ or not cls.__dict__["message_name"]:
            cls.message_name = naming.message_name(cls.__name__)
        if not isinstance(cls.message_version, int) or cls.message_version < 1:
            raise InvalidMessageError(f"{cls.__name__}.message_version must be an integer >= 1")
        if cls.__module__ != __name__:
            from eventyard.codec import default_registry

            default_registry.register(cls)

    def get_message_id(self) -> str:
        """The unique id of this message (a UUID v4 string)."""
        if self._message_id is None:  # built without __init__ (model_construct)
            self._message_id = str(uuid.uuid4())
        return self._message_id

    def get_message_name(self) -> str:
        """The dotted name, e.g. ``user.created``."""
        return self._foreign[0] if self._foreign else type(self).message_name

    def get_message_version(self) -> int:
        """The message version (1 unless the class sets another)."""
        return self._foreign[1] if self._foreign else type(self).message_version

    def get_message_kind(self) -> MessageKind:
        """``event`` or ``command``."""
        return type(self).message_kind

    def get_occurred_on(self) -> datetime:
        """When the message was created (naive UTC)."""
        if self._occurred_on is None:  # built without __init__ (model_construct)
            self._occurred_on = utc_now()
        return self._occurred_on

    def get_meta(self) -> dict[str, Any]:
        """A copy of the meta dictionary that travels with the message."""
        return dict(self._meta)

    def get_attributes(self) -> dict[str, Any]:
        """The message's fields as JSON-ready values."""
        if self._foreign:
            return dict(self._foreign[2])
        return self.model_dump(mode="json")

    def with_meta(self, meta: dict[str, Any]) -> Self:
        """Merge ``meta`` into the message's meta and return the message."""
        if not isinstance(meta, dict):
            raise InvalidMessageError(f"meta must be a dict, got {type(meta).__name__}")
        self._meta.update(meta)
        return self

    def add_info_id(self, info_id: InfoId) -> Self:
        """Attach an ``InfoId`` under ``meta["info_id"]`` and return the message."""
        if not isinstance(info_id, InfoId):
            raise InvalidMessageError(f"add_info_id expects an InfoId, got {type(info_id).__name__}")
        self._meta["info_id"] = info_id.model_dump(exclude_none=True)
        return self

    def get_info_id(self) -> InfoId | None:
        """The attached ``InfoId``, if any."""
        raw = self._meta.get("info_id")
        return InfoId.model_validate(raw) if isinstance(raw, dict) else None

    def get_correlation_id(self) -> str:
        """The id of the conversation this message belongs to: the meta's ``correlation_id``
        (or its ``InfoId``'s), else the message's own id (it starts a conversation)."""
        private = self.__pydantic_private__ or {}  # read at once: pydantic's lookup is slow
        meta = private.get("_meta")
        found = valid_id(meta.get("correlation_id")) if meta else None
        if found is None and meta and isinstance(info := meta.get("info_id"), dict):
            found = valid_id(info.get("correlation_id"))
        if found is not None:
            return found
        own = private.get("_message_id")
        return own if own is not None else self.get_message_id()

    def get_causation_id(self) -> str | None:
        """The id of the message whose handler published this one (None for a first message)."""
        meta = (self.__pydantic_private__ or {}).get("_meta")
        return valid_id(meta.get("causation_id")) if meta else None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.get_attributes().items())
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__


class DomainEvent(Message):
    """Something that happened in the domain; fans out to every subscriber."""

    message_kind: ClassVar[MessageKind] = "event"


class Command(Message):
    """A request to do something; handled by exactly one handler."""

    message_kind: ClassVar[MessageKind] = "command"
