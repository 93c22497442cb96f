"""Names petisco 2.2.3 and eventyard derive from class names: the same, except for acronyms.

petisco puts a word boundary before every capital (``HTTPRequestMade`` -> ``h.t.t.p.request.made``),
eventyard before a capital that starts a word (``http.request.made``). Setting ``message_name``
on the eventyard class, and naming a handler function as petisco names the subscriber, gives
petisco's names back.
"""

from __future__ import annotations

from typing import Any

import petisco
import pytest
from petisco.extra.rabbitmq.application.message.formatter.rabbitmq_message_subscriber_queue_name_formatter import (  # noqa: E501
    RabbitMqMessageSubscriberQueueNameFormatter as PetiscoQueueNames,
)

from eventyard import DomainEvent, MessageSubscriber, Uuid
from eventyard.subscribers import subscriptions_of
from eventyard.topology import subscription_queue

pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")


class UserCreated(petisco.DomainEvent):
    user_id: str


class HTTPRequestMade(petisco.DomainEvent):
    url: str


def petisco_queues(message: type, subscriber_name: str) -> tuple[str, str]:
    """(message name, queue) as petisco 2.2.3 names them for a subscriber class."""

    def handle(self: Any, received: Any) -> Any:
        return petisco.DomainEventSubscriber  # never called

    subscriber_class = type(petisco.DomainEventSubscriber)(
        subscriber_name, (petisco.DomainEventSubscriber,),
        {"subscribed_to": lambda self: [message], "handle": handle})
    subscriber = subscriber_class()
    [info] = subscriber.get_message_subscribers_info()
    queue = PetiscoQueueNames.format(info, exchange_name="acme.registration")
    return info.message_name, f"{queue}.{subscriber.get_subscriber_name()}"


def yard_queue(subscriber: MessageSubscriber) -> str:
    [subscription] = subscriptions_of([subscriber])
    return subscription_queue("acme", "registration", subscription, "store")


def test_plain_names_and_versions_are_the_same() -> None:
    class AccountClosed(petisco.DomainEvent):
        """Version 2, petisco's way (pydantic warns of the class-based config)."""

        class Config:
            version = 2

    class YardUserCreated(DomainEvent):
        message_name = "user.created"
        user_id: Uuid

    class SendMailOnUserCreated(MessageSubscriber):
        def subscribed_to(self) -> list[type[DomainEvent]]:
            return [YardUserCreated]

        def handle(self, message: Any) -> None:
            return None

    class YardAccountClosed(DomainEvent):
        message_name = "account.closed"
        message_version = 2

    def notify(event: YardAccountClosed) -> None:
        return None

    name, queue = petisco_queues(UserCreated, "SendMailOnUserCreated")
    assert (name, queue) == ("user.created", yard_queue(SendMailOnUserCreated()))
    assert queue == "acme.registration.1.event.user_created.send_mail_on_user_created"
    assert petisco_queues(AccountClosed, "Notify")[1] == yard_queue(
        MessageSubscriber.from_message(YardAccountClosed, [notify])
    ) == "acme.registration.2.event.account_closed.notify"


def test_acronyms_need_petiscos_names_set_by_hand() -> None:
    class HTTPRequestMadeHere(DomainEvent):  # eventyard's default name would be http.request...
        url: str

    class NotifyAPIClient(MessageSubscriber):
        def subscribed_to(self) -> list[type[DomainEvent]]:
            return [HTTPRequestMadeHere]

        def handle(self, message: Any) -> None:
            return None

    class PetiscoNamed(DomainEvent):
        message_name = "h.t.t.p.request.made"
        url: str

    def notify_a_p_i_client(event: PetiscoNamed) -> None:
        return None

    name, queue = petisco_queues(HTTPRequestMade, "NotifyAPIClient")
    assert (name, queue) == ("h.t.t.p.request.made",
                             "acme.registration.1.event.h_t_t_p_request_made.notify_a_p_i_client")
    assert HTTPRequestMadeHere.message_name == "http.request.made.here"
    assert yard_queue(NotifyAPIClient()).endswith(".http_request_made_here.notify_api_client")
    assert yard_queue(MessageSubscriber.from_message(PetiscoNamed, [notify_a_p_i_client])) == queue
