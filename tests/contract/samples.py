"""The seed's story as test messages: shared by the unit tests and the contract suite."""

from __future__ import annotations

from eventyard import Command, DomainEvent, Uuid


class UserCreated(DomainEvent):
    """A user signed up."""

    user_id: Uuid


class UserConfirmed(DomainEvent):
    """A user confirmed their address (published from inside a handler)."""

    user_id: Uuid


class PersistUser(Command):
    """Store a user."""

    user_id: Uuid
    name: str = "ann"


class NobodyListens(Command):
    """A command no subscriber handles."""

    reason: str = "none"
