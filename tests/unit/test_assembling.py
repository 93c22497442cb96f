"""Deliveries assembled from their frames by the fast frame reader read what pamqp reads.

The frames are marshalled by pamqp, as a broker would send them; the assembled delivery must
give the values pamqp's own unmarshalling gives, whatever the properties, the body's size and
the frames of other channels in between.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from eventyard.rabbitmq.assembling import Assembly
from eventyard.rabbitmq.delivery import RabbitMqDelivery, Settlements

FRAME_MAX = 4096


def frames(number: int, properties: spec.Basic.Properties, body: bytes, *, tag: int = 7,
           redelivered: bool = False) -> list[bytes]:
    deliver = spec.Basic.Deliver(consumer_tag="ctag-1", delivery_tag=tag, redelivered=redelivered,
                                 exchange="acme.registration", routing_key="acme.registration.1."
                                 "event.user_created")
    parts = [pamqp.frame.marshal(deliver, number),
             pamqp.frame.marshal(ContentHeader(0, len(body), properties), number)]
    for at in range(0, len(body), FRAME_MAX):
        parts.append(pamqp.frame.marshal(ContentBody(body[at:at + FRAME_MAX]), number))
    return parts


def feed(assembly: Assembly, raw: list[bytes]) -> list[bool]:
    """Hand each frame to ``assembly`` as the reader does; what it took."""
    taken = []
    for frame in raw:
        buffer = bytearray(b"junk" + frame + b"more")  # the reader's buffer holds other frames
        taken.append(assembly.take(buffer, 4, frame[0], 4 + len(frame)))
    return taken


PROPERTIES = [
    spec.Basic.Properties(),
    spec.Basic.Properties(content_type="application/json", delivery_mode=2, message_id="m-1",
                          message_type="user.created", timestamp=datetime(2026, 11, 28, tzinfo=UTC),
                          correlation_id="c-1"),
    spec.Basic.Properties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2, priority=3,
        correlation_id="c-ü", reply_to="r", expiration="60000", message_id="m-2",
        timestamp=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), message_type="t", user_id="guest",
        app_id="app", headers={"redelivery_count": 3, "nested": {"list": [1, "two", 3.5, None]},
                               "failure_message": "x" * 300, "flag": True}),
]


@pytest.mark.parametrize("properties", PROPERTIES, ids=["none", "eventyard's", "all"])
@pytest.mark.parametrize("size", [0, 270, FRAME_MAX * 2 + 5], ids=["empty", "one frame", "three"])
def test_an_assembled_delivery_reads_as_pamqp_reads_it(properties: spec.Basic.Properties,
                                                       size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = frames(3, properties, body, redelivered=True)
    pushed: list[Any] = []
    assert feed(Assembly(pushed.append), raw) == [True] * len(raw)
    [delivered] = pushed
    expected = pamqp.frame.unmarshal(raw[1])[2].properties
    assert delivered.body == body
    assert delivered.delivery.delivery_tag == 7 and delivered.delivery.redelivered is True
    assert delivered.delivery.routing_key == "acme.registration.1.event.user_created"
    assert delivered.delivery.exchange == "acme.registration"
    got = delivered.header.properties
    for name in ("headers", "message_id", "message_type", "correlation_id", "timestamp"):
        assert getattr(got, name) == getattr(expected, name), name


async def test_a_delivery_reads_the_same_from_an_assembly_and_from_pamqp() -> None:
    properties = PROPERTIES[2]
    raw = frames(1, properties, b'{"data": {}}', tag=9)
    pushed: list[Any] = []
    feed(Assembly(pushed.append), raw)
    fast = RabbitMqDelivery(pushed[0], "q", Settlements(None, 64))
    from aiormq.abc import DeliveredMessage

    slow = RabbitMqDelivery(DeliveredMessage(delivery=pamqp.frame.unmarshal(raw[0])[2],
                                             header=pamqp.frame.unmarshal(raw[1])[2],
                                             body=b'{"data": {}}', channel=None),  # type: ignore[arg-type]
                            "q", Settlements(None, 64))
    for name in ("body", "exchange", "routing_key", "headers", "redelivered", "message_id",
                 "type", "timestamp", "correlation_id"):
        assert getattr(fast, name) == getattr(slow, name), name


def test_other_frames_of_the_channel_are_left_to_aiormq() -> None:
    pushed: list[Any] = []
    assembly = Assembly(pushed.append)
    others = [pamqp.frame.marshal(spec.Basic.ConsumeOk(consumer_tag="ctag-1"), 1),
              pamqp.frame.marshal(spec.Basic.CancelOk(consumer_tag="ctag-1"), 1)]
    returned = [pamqp.frame.marshal(spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE",
                                                      exchange="x", routing_key="k"), 1),
                pamqp.frame.marshal(ContentHeader(0, 2, spec.Basic.Properties()), 1),
                pamqp.frame.marshal(ContentBody(b"{}"), 1)]
    assert feed(assembly, others + returned) == [False] * 5
    assert pushed == []


def test_a_property_it_cannot_read_is_read_by_pamqp_or_repaired() -> None:
    """A timestamp past year 9999 (pamqp cannot read it): the delivery still comes, with its
    properties repaired as on every other path."""
    properties = spec.Basic.Properties(message_id="m-1")
    raw = frames(1, properties, b"{}")
    header = bytearray(raw[1])
    # message_id alone (flag 0x0080) -> add a timestamp (0x0040) of 2**63 ms.
    flags = int.from_bytes(header[19:21], "big") | 0x0040
    header[19:21] = flags.to_bytes(2, "big")
    payload_end = len(header) - 1
    header[payload_end:payload_end] = (2**63).to_bytes(8, "big")
    header[3:7] = (len(header) - 8).to_bytes(4, "big")
    raw[1] = bytes(header)
    pushed: list[Any] = []
    assert feed(Assembly(pushed.append), raw) == [True, True, True]
    [delivered] = pushed
    assert delivered.body == b"{}"
    assert delivered.header.properties.message_id == "m-1"
