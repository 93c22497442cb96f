"""A billing service that charges on registration's ``UserCreated`` (a cross-service subscriber)."""

from __future__ import annotations

from cli.cliapp import UserCreated
from eventyard import MessageSubscriber


def charge(event: UserCreated) -> bool:
    """Fails: the card processor is down."""
    return False


subscribers = [MessageSubscriber.from_message(UserCreated, [charge], publisher="registration")]
