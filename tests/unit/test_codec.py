"""The wire envelope, both ways: petisco-compatible, lenient on optional keys, strict on errors."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from contract.samples import PersistUser, UserCreated
from eventyard import Command, DomainEvent, Message, MessageDecodeError, Uuid
from eventyard.codec import OCCURRED_ON_FORMAT, MessageRegistry, decode, encode

USER = "1f0c1a4e-5b7d-4c8e-9a3b-2d6e8f0a1b2c"


def petisco_body(**data_overrides: object) -> bytes:
    data: dict[str, object] = {
        "id": "6f1c9a8e-0d2b-4e5f-8a7c-3b4d5e6f7a8b", "type": "user.created",
        "type_message": "domain_event", "version": 1,
        "occurred_on": "2026-11-27 10:15:02.123456", "attributes": {"user_id": USER},
        "meta": {"info_id": {"client_id": "acme"}},
    }
    data.update(data_overrides)
    return json.dumps({"data": {k: v for k, v in data.items() if v is not ...}}).encode()


def test_encode_produces_the_petisco_envelope() -> None:
    event = UserCreated(user_id=Uuid(USER)).with_meta({"source": "signup"})
    document = json.loads(encode(event))
    data = document["data"]
    assert set(document) == {"data"}
    assert data["id"] == event.get_message_id()
    assert (data["type"], data["type_message"], data["version"]) == ("user.created", "domain_event", 1)
    assert data["attributes"] == {"user_id": USER}
    assert data["meta"] == {"source": "signup"}
    datetime.strptime(data["occurred_on"], OCCURRED_ON_FORMAT)
    assert json.loads(encode(PersistUser(user_id=Uuid(USER))))["data"]["type_message"] == "command"


def known(*classes: type[Message]) -> MessageRegistry:
    """A registry of just ``classes``: other test modules define their own UserCreated."""
    registry = MessageRegistry()
    for cls in classes:
        registry.register(cls)
    return registry


def test_round_trip_keeps_type_identity_and_meta() -> None:
    registry = known(UserCreated)
    event = UserCreated(user_id=Uuid.v4()).with_meta({"k": "v"})
    decoded = decode(encode(event), registry=registry)
    assert type(decoded) is UserCreated
    assert decoded == event
    assert decoded.get_message_id() == event.get_message_id()
    assert decoded.get_occurred_on() == event.get_occurred_on()
    assert decoded.get_meta() == {"k": "v"}


def test_petisco_body_decodes_into_the_typed_class() -> None:
    decoded = decode(petisco_body(), expected=UserCreated)
    assert isinstance(decoded, UserCreated)
    assert decoded.user_id == USER
    assert decoded.get_message_id() == "6f1c9a8e-0d2b-4e5f-8a7c-3b4d5e6f7a8b"
    assert decoded.get_occurred_on() == datetime(2026, 11, 27, 10, 15, 2, 123456)
    assert decoded.get_info_id() is not None


def test_lenient_without_meta_type_message_or_version() -> None:
    decoded = decode(petisco_body(meta=..., type_message=..., version=...), expected=UserCreated)
    assert isinstance(decoded, UserCreated)
    assert decoded.get_meta() == {}


def test_a_subscriber_to_every_message_keeps_what_the_known_class_cannot_validate() -> None:
    registry = known(UserCreated)
    for body in (petisco_body(attributes={"user_id": "not-a-uuid"}), petisco_body(type_message="command")):
        decoded = decode(body, registry=registry, allow_unknown=True)
        assert type(decoded) in (DomainEvent, Command)
        assert decoded.get_message_name() == "user.created"
        assert decoded.get_message_id() == "6f1c9a8e-0d2b-4e5f-8a7c-3b4d5e6f7a8b"


def test_unknown_type_becomes_a_generic_message_when_allowed() -> None:
    decoded = decode(petisco_body(type="account.closed", attributes={"x": 1}), allow_unknown=True)
    assert type(decoded) is DomainEvent
    assert decoded.get_message_name() == "account.closed"
    assert decoded.get_attributes() == {"x": 1}


@pytest.mark.parametrize(("body", "expected_error"), [
    (b"not json at all", "not JSON"),
    (b'{"nodata": {}}', "no 'data' object"),
    (b'["a list"]', "no 'data' object"),
    (petisco_body(type=...), "'data.type' is missing"),
    (petisco_body(type="no.such.message"), "unknown message type 'no.such.message'"),
    (petisco_body(attributes={"user_id": 42}), "attributes are invalid"),
    (petisco_body(attributes={"user_id": "not-a-uuid"}), "user_id"),
    (petisco_body(version="one"), "'data.version' must be an integer"),
    (petisco_body(version=2), "unknown message type 'user.created' version 2"),
    (petisco_body(type_message="query"), "is not domain_event/command"),
    (petisco_body(type_message="command"), "is a event, body says command"),
    (petisco_body(meta=[1]), "'data.meta' must be an object"),
    (petisco_body(occurred_on="yesterday"), "is not a date"),
])
def test_decode_errors_say_what_is_wrong(body: bytes, expected_error: str) -> None:
    with pytest.raises(MessageDecodeError, match=expected_error.replace("(", r"\(").replace(".", r"\.")):
        decode(body, registry=known(UserCreated, PersistUser))


def test_expected_class_must_match_name_and_version() -> None:
    with pytest.raises(MessageDecodeError, match=r"expected persist\.user v1, got user\.created v1"):
        decode(petisco_body(), expected=PersistUser)
    with pytest.raises(MessageDecodeError, match=r"got user\.created v2"):
        decode(petisco_body(version=2), expected=UserCreated)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError, match="expected a DomainEvent or Command"):
        encode({"data": {}})  # type: ignore[arg-type]


def _with_body(**overrides: object) -> bytes:
    return petisco_body(**overrides)


HOSTILE_BODIES = {
    "date before the first day": (_with_body(occurred_on="0001-01-01T00:00:00+01:00"), "out of range"),
    "date after the last day": (_with_body(occurred_on="9999-12-31T23:59:59-01:00"), "out of range"),
    "date of year zero": (_with_body(occurred_on="0000-01-01 00:00:00.000000"), "not a date"),
    "date as a number": (_with_body(occurred_on=10**30), "must be a string"),
    "nested beyond any limit": (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON"),
    "nested attributes": (_with_body(attributes={"user_id": USER, "x": json.loads("[" * 300 + "]" * 300)}),
                          "not JSON"),
    "not UTF-8": (b'{"data": {"type": "\xff\xfe"}}', "not JSON"),
    "a lone surrogate": (b'{"data": {"type": "\\ud800"}}', "not JSON"),
    "a NUL byte": (b"\x00", "not JSON"),
    "a version of 5000 digits": (b'{"data": {"type": "user.created", "version": ' + b"9" * 5000 + b"}}",
                                 "not JSON"),
    "a version beyond 32 bits": (_with_body(version=2**40), "must be an integer"),
    "an id that is a huge number": (_with_body(id=10**100), "'data.id' must be a string"),
    "a list": (b"[1, 2]", "no 'data' object"),
    "data as a string": (b'{"data": "x"}', "no 'data' object"),
    "attributes as a list": (_with_body(attributes=[1]), "'data.attributes' must be an object"),
    "a type of a megabyte": (_with_body(type="t" * 1_000_000), "unknown message type|got t+\\.\\.\\. v1"),
}


@pytest.mark.parametrize(("body", "expected_error"), HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_anything_raised_while_decoding_is_a_decode_error(body: bytes, expected_error: str) -> None:
    for expected in (UserCreated, None):
        with pytest.raises(MessageDecodeError, match=expected_error) as raised:
            decode(body, expected=expected, registry=known(UserCreated))
        assert len(str(raised.value)) < 1000  # a hostile value is never repeated in full


def test_an_error_raised_by_a_validator_is_a_decode_error() -> None:
    from pydantic import field_validator

    class Touchy(DomainEvent):
        value: int

        @field_validator("value")
        @classmethod
        def refuse(cls, value: int) -> int:
            raise OverflowError("too big for us")

    body = json.dumps({"data": {"type": Touchy.message_name, "attributes": {"value": 1}}}).encode()
    with pytest.raises(MessageDecodeError, match="OverflowError: too big for us"):
        decode(body, expected=Touchy)
