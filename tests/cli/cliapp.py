"""The application the CLI tests operate: ``UserCreated`` and a mail handler that can fail.

``subscribers()`` reads ``CLIAPP_FAIL`` (fail every message) and ``CLIAPP_LOG`` (a file to
append handled message ids to) so a CLI process started by a test behaves as told.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from eventyard import DomainEvent, MessageSubscriber, Uuid

SERVICE = "registration"


class UserCreated(DomainEvent):
    """A user signed up."""

    user_id: Uuid


class MailServerDown(Exception):
    """The failure the failing handler raises."""


def mail_handler(*, fail: bool,
                 handled: Callable[[str], None] | None = None) -> Callable[[UserCreated], None]:
    """A handler named ``send_mail_handler`` that always fails, or records what it handled."""

    def send_mail_handler(event: UserCreated) -> None:
        if fail:
            raise MailServerDown(f"smtp timeout for {event.user_id}")
        if handled is not None:
            handled(event.get_message_id())

    return send_mail_handler


def _append_to_log(message_id: str) -> None:
    with open(os.environ["CLIAPP_LOG"], "a", encoding="utf-8") as log:
        log.write(message_id + "\n")


def subscribers() -> list[MessageSubscriber]:
    """The application's subscribers, as ``cli.cliapp:subscribers``."""
    handled = _append_to_log if os.environ.get("CLIAPP_LOG") else None
    handler = mail_handler(fail=os.environ.get("CLIAPP_FAIL") == "1", handled=handled)
    return [MessageSubscriber.from_message(UserCreated, [handler])]


def queue(org: str) -> str:
    """The subscriber queue ``Q`` for ``org``."""
    return f"{org}.{SERVICE}.1.event.user_created.send_mail_handler"
