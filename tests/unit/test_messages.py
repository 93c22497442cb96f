"""Messages: names, versions, Uuid, positional fields, meta and InfoId."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from contract.samples import PersistUser, UserCreated
from eventyard import Command, DomainEvent, InfoId, Uuid


class HTTPRequestSent(DomainEvent):
    url: str


class UserRenamed(DomainEvent):
    message_version = 2
    user_id: Uuid
    name: str


def test_name_and_version_derivation() -> None:
    assert UserCreated.message_name == "user.created"
    assert HTTPRequestSent.message_name == "http.request.sent"
    assert UserCreated.message_version == 1
    assert UserRenamed.message_version == 2
    event = UserRenamed(user_id=Uuid.v4(), name="x")
    assert (event.get_message_name(), event.get_message_version(), event.get_message_kind()) == (
        "user.renamed", 2, "event")
    assert PersistUser(user_id=Uuid.v4()).get_message_kind() == "command"


def test_invalid_version_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match="message_version must be an integer >= 1"):
        class Broken(Command):
            message_version = 0


def test_uuid_validation_and_v4() -> None:
    value = Uuid.v4()
    assert uuid.UUID(value).version == 4
    assert Uuid(value.upper()) == value  # canonical lower case
    assert Uuid(uuid.UUID(value)) == value
    with pytest.raises(ValueError, match="is not a valid UUID"):
        Uuid("nope")
    with pytest.raises(ValidationError):
        UserCreated(user_id="nope")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        UserCreated(user_id=12)  # type: ignore[arg-type]
    assert isinstance(UserCreated(user_id=str(uuid.uuid4())).user_id, Uuid)  # type: ignore[arg-type]


def test_positional_fields_in_declaration_order() -> None:
    user = Uuid.v4()
    event = UserRenamed(user, "ann")
    assert (event.user_id, event.name) == (user, "ann")
    with pytest.raises(TypeError, match="at most 2 positional fields"):
        UserRenamed(user, "ann", "extra")
    with pytest.raises(TypeError, match="got 'user_id' twice"):
        UserRenamed(user, user_id=user, name="x")


def test_each_message_has_its_own_id_and_occurred_on() -> None:
    first, second = UserCreated(user_id=Uuid.v4()), UserCreated(user_id=Uuid.v4())
    assert first.get_message_id() != second.get_message_id()
    uuid.UUID(first.get_message_id())
    assert first.get_occurred_on().tzinfo is None


def test_with_meta_merges_and_returns_the_message() -> None:
    event = UserCreated(user_id=Uuid.v4())
    assert event.with_meta({"a": 1}) is event
    event.with_meta({"b": 2})
    assert event.get_meta() == {"a": 1, "b": 2}
    event.get_meta()["c"] = 3  # a copy: the message is unchanged
    assert "c" not in event.get_meta()
    with pytest.raises(TypeError, match="meta must be a dict"):
        event.with_meta([("a", 1)])  # type: ignore[arg-type]


def test_add_info_id_travels_in_meta() -> None:
    info = InfoId(client_id="acme", user_id="u1", correlation_id="c1")
    event = UserCreated(user_id=Uuid.v4()).add_info_id(info)
    assert event.get_meta()["info_id"] == {"client_id": "acme", "user_id": "u1", "correlation_id": "c1"}
    assert event.get_info_id() == info
    assert UserCreated(user_id=Uuid.v4()).get_info_id() is None
    with pytest.raises(TypeError, match="add_info_id expects an InfoId"):
        event.add_info_id({"client_id": "x"})  # type: ignore[arg-type]


def test_attributes_and_repr() -> None:
    user = Uuid.v4()
    event = UserCreated(user_id=user)
    assert event.get_attributes() == {"user_id": user}
    assert repr(event) == f"UserCreated(user_id='{user}')"
