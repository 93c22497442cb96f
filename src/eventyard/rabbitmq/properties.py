"""The AMQP properties of a message eventyard publishes: built here, for every publish path.

The event loop's paths (aiormq's ``basic_publish`` and the pipelined fast path) and the
blocking publisher all put the same properties on the wire. A message without a
``message_id`` gets a random one: a returned (unroutable) message is matched to its publish by
it, and a consumer deduplicates by it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pamqp import commands as spec

from eventyard.ports import OutgoingMessage


def basic_properties(message: OutgoingMessage) -> spec.Basic.Properties:
    """The properties of ``message``: persistent, with its id, type, timestamp and headers."""
    return spec.Basic.Properties(
        content_type=message.content_type,
        delivery_mode=2,
        message_id=message.message_id or uuid.uuid4().hex,
        message_type=message.type,
        timestamp=(datetime.fromtimestamp(message.timestamp, UTC)
                   if message.timestamp is not None else None),
        headers=message.headers or None,
        correlation_id=message.correlation_id,
    )
