"""The seed's registration service: its messages, handlers and subscribers.

``ORGANIZATION`` / ``SERVICE`` come from EXAMPLE_ORGANIZATION / EXAMPLE_SERVICE (default
acme / registration); EXAMPLE_STORE_QUEUE renames the store queue (default ``store``).
EXAMPLE_FAILING_HANDLERS=1 makes the mail and sms handlers fail, to fill
the dead-letter queues for the CLI's requeue (see the README).
"""

from __future__ import annotations

import os

from meiga import Error, Result, isFailure, isSuccess

from eventyard import Command, DomainEvent, MessageSubscriber, Uuid

ORGANIZATION = os.environ.get("EXAMPLE_ORGANIZATION", "acme")
SERVICE = os.environ.get("EXAMPLE_SERVICE", "registration")
FAILING = os.environ.get("EXAMPLE_FAILING_HANDLERS") == "1"
MAX_RETRIES = int(os.environ.get("EXAMPLE_MAX_RETRIES", "5"))
STORE_QUEUE = os.environ.get("EXAMPLE_STORE_QUEUE", "store")
RETRY_TTL_MS = int(os.environ.get("EXAMPLE_RETRY_TTL_MS", "5000"))


class UserCreated(DomainEvent):
    user_id: Uuid
    name: str


class UserConfirmed(DomainEvent):
    user_id: Uuid


class PersistUser(Command):
    user_id: Uuid
    name: str


def send_mail_on_user_created(event: UserCreated) -> Result[bool, Error]:
    print(f"  send_mail_on_user_created: welcome mail to {event.name} ({event.user_id})", flush=True)
    return isFailure if FAILING else isSuccess


def send_sms_on_user_confirmed(event: UserConfirmed) -> Result[bool, Error]:
    print(f"  send_sms_on_user_confirmed: sms for {event.user_id}", flush=True)
    return isFailure if FAILING else isSuccess


def persist_user(command: PersistUser) -> Result[bool, Error]:
    print(f"  persist_user: {command.name} saved", flush=True)
    return isSuccess


def event_store(message: DomainEvent) -> Result[bool, Error]:
    print(f"  event_store: stored {message.get_message_name()} {message.get_message_id()}", flush=True)
    return isSuccess


SUBSCRIBERS = [
    MessageSubscriber.from_message(UserCreated, [send_mail_on_user_created]),
    MessageSubscriber.from_message(UserConfirmed, [send_sms_on_user_confirmed]),
    MessageSubscriber.from_message(PersistUser, [persist_user]),
    MessageSubscriber.all_messages([event_store]),
]
