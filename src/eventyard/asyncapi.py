"""An AsyncAPI 3.0 document of what an application receives: messages, channels, operations.

One channel per message a subscriber takes: the service's topic exchange with the message's
routing key (``acme.registration.1.event.user_created``), carrying the petisco-2 envelope
(``{"data": {"id", "type", "type_message", "version", "occurred_on", "attributes", "meta"}}``)
whose ``attributes`` are the message class's fields (pydantic's JSON schema). One ``receive``
operation per handler, naming the queue it consumes. The store (every message) has none: it
takes no message in particular.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventyard import naming
from eventyard.messages import Message
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.subscribers import MessageSubscriber, subscriptions_of

ASYNCAPI_VERSION = "3.0.0"


def _key(text: str) -> str:
    # Component and channel ids: letters, digits, dots, dashes and underscores only.
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _envelope(cls: type[Message], kind: str) -> dict[str, Any]:
    attributes = cls.model_json_schema(mode="serialization")
    definitions = attributes.pop("$defs", {})
    schema: dict[str, Any] = {
        "type": "object", "required": ["data"],
        "properties": {"data": {
            "type": "object", "required": ["id", "type", "version", "occurred_on", "attributes"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "type": {"type": "string", "const": cls.message_name},
                "type_message": {"type": "string", "const": "domain_event" if kind == "event"
                                 else "command"},
                "version": {"type": "integer", "const": cls.message_version},
                "occurred_on": {"type": "string", "description": "UTC, %Y-%m-%d %H:%M:%S.%f"},
                "attributes": attributes,
                "meta": {"type": "object"},
            }}},
    }
    if definitions:
        schema["$defs"] = definitions
    return schema


def asyncapi_document(org: str, svc: str, subscribers: Sequence[MessageSubscriber], *,
                      settings: ConnectionSettings | None = None,
                      title: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``subscribers`` run as ``org.svc`` (a JSON-ready dict)."""
    naming.check_word(org, "organization")
    naming.check_word(svc, "service")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for subscription in subscriptions_of(subscribers):
        cls = subscription.message_class
        if cls is None:
            continue  # the store: every message, no channel of its own
        owner = subscription.publisher or svc
        kind = cls.message_kind
        key = naming.routing_key(org, owner, cls.message_version, kind, cls.message_name)
        message_id = _key(f"{cls.message_name}.v{cls.message_version}")
        messages.setdefault(message_id, {
            "name": cls.message_name, "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__,
            "contentType": "application/json",
            "payload": _envelope(cls, kind),
            "bindings": {"amqp": {"messageType": cls.message_name, "bindingVersion": "0.3.0"}},
        })
        channel_id = _key(key)
        channels.setdefault(channel_id, {
            "address": key,
            "description": f"{kind} {cls.message_name} v{cls.message_version} of {org}.{owner}, "
                           f"published on the topic exchange {naming.exchange(org, owner)}",
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": naming.exchange(org, owner), "type": "topic", "durable": True,
                "autoDelete": False, "vhost": settings.vhost if settings else "/"},
                "bindingVersion": "0.3.0"}},
        })
        queue = naming.queue(org, owner, cls.message_version, kind, cls.message_name,
                             subscription.handler_name)
        operations[_key(f"receive.{subscription.handler_name}.{channel_id}")] = {
            "action": "receive",
            "summary": f"{subscription.handler_name} handles {cls.message_name} from {queue}",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
            "bindings": {"amqp": {"ack": True, "bindingVersion": "0.3.0"}},
        }
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title or f"{org}.{svc}", "version": "1.0.0",
                 "description": f"What {org}.{svc} receives, as eventyard declares it (retries "
                                "and dead letters are eventyard's, per channel queue)."},
        "defaultContentType": "application/json",
        "channels": channels, "operations": operations,
        "components": {"messages": messages},
    }
    if settings is not None:
        host = settings.hosts[0] if settings.hosts else "localhost"
        document["servers"] = {"rabbitmq": {
            "host": f"{host}:{settings.port}", "protocol": "amqps" if settings.tls else "amqp",
            "pathname": "/" + settings.vhost.lstrip("/") if settings.vhost != "/" else "/",
            "description": "the broker (credentials are not part of this document)"}}
    return document
