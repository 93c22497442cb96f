"""Hostile values in a dead letter, without a broker: ids, previews, headers and the requeued copy.

The broker tests (``test_cli_hostile.py``) publish what pika and pamqp can write; these cover
what only a hand-made frame can carry (a string that is not UTF-8, which pamqp decodes as
``bytes``; a double too large for the single-precision float pamqp writes back; an unsigned
64-bit integer).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import (
    CopyProblem,
    DeadLetter,
    Failure,
    Selection,
    copy_properties,
    fingerprint,
    jsonable,
    preview,
    printable,
)

QUEUE = "dead_letter.acme.registration.1.event.user_created.send_mail_handler"


def letter(body: bytes = b"{}", headers: dict[str, Any] | None = None,
           message_id: str | None = None) -> DeadLetter:
    headers = headers or {}
    return DeadLetter(queue=QUEUE, body=body, headers=headers, message_id=message_id, type=None,
                      routing_key="", timestamp=None, redelivered=False,
                      failure=Failure.from_headers(headers), fingerprint=fingerprint(body),
                      problem="body is not JSON")


def frame_size(properties: spec.Basic.Properties, body: bytes = b"{}") -> int:
    return len(amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), properties), 1))


def test_id_is_a_printable_message_id_else_the_body_fingerprint() -> None:
    body = b"\xff\x00 binary"
    assert letter(body, message_id="abc-1").id == "abc-1"
    assert letter(body, message_id=None).id == fingerprint(body)
    assert letter(body, message_id="").id == fingerprint(body)
    assert letter(body, message_id="\x1b[2Jx").id == fingerprint(body)
    assert fingerprint(body) == fingerprint(bytes(body)) and fingerprint(body).startswith("sha256:")
    assert len(fingerprint(body)) == len("sha256:") + 16


def test_an_id_selects_by_message_id_or_fingerprint() -> None:
    odd = letter(b"x", message_id="\x1b[2Jx")
    assert Selection.of([fingerprint(b"x")]).matches(odd)
    assert Selection.of(["\x1b[2Jx"]).matches(odd)
    assert not Selection.of(["other"]).matches(odd)
    assert not Selection.of([""]).matches(letter(b"y"))  # an empty id names no message
    assert Selection.of(undecodable=True).matches(odd)


def test_preview_and_printable_escape_what_a_terminal_would_obey() -> None:
    assert preview(b"\x1b[31mred\x07 \xff\xfe") == "\\x1b[31mred\\x07 \\xff\\xfe"
    assert preview(b"x" * 500) == "x" * dead_letters.PREVIEW_CHARS + "…"
    assert preview("é".encode() * 10) == "é" * 10
    assert printable("a\u202eb\u200bc") == "a\\u202eb\\u200bc"  # bidi override, zero width space
    assert printable("line\nnext\r", keep="\n") == "line\nnext\\x0d"


def test_header_values_of_any_type_read_as_bounded_text() -> None:
    failure = Failure.from_headers({
        "failure_type": 12345, "failure_message": "m" * 100_000, "failure_stack": b"\xff\xfe",
        "failure_attempts": "abc", "failure_first_at": {"a": {"b": [1, b"x"]}},
        "failure_queue": None})
    assert failure.type == "12345" and failure.attempts is None and failure.queue is None
    assert failure.message is not None and len(failure.message) < 8_100
    assert failure.message.endswith("(92,000 more characters)")
    assert failure.stack == "\ufffd\ufffd"
    assert failure.first_at == '{"a": {"b": [1, "x"]}}'
    assert Failure.from_headers({"failure_attempts": "7"}).attempts == 7
    assert Failure.from_headers({"failure_attempts": True}).attempts is None


def test_deeply_nested_headers_always_serialise() -> None:
    table: dict[str, Any] = {"leaf": float("nan")}
    for _ in range(500):
        table = {"down": table}
    document = jsonable(table)
    text = json.dumps(document, allow_nan=False)
    assert "(nested deeper than 16 levels)" in text


def test_a_copy_carries_back_what_pamqp_decoded_but_cannot_write() -> None:
    headers = {"x-not-utf8": b"\xff\xfe", "x-double": 1e300, "x-unsigned": 2**64 - 1,
               "x-table": {"inner": b"\xc3\x28"}, "x-fine": [1, "two"]}
    properties = copy_properties(spec.Basic.Properties(message_id="m-1"), letter(headers=headers))
    copied = properties.headers
    assert copied is not None
    assert copied["x-not-utf8"] == bytearray(b"\xff\xfe")  # the same bytes, as a byte array
    assert copied["x-double"] == "1e+300" and copied["x-unsigned"] == str(2**64 - 1)
    assert copied["x-table"] == {"inner": bytearray(b"\xc3\x28")} and copied["x-fine"] == [1, "two"]
    assert frame_size(properties) < 1_000


def test_a_copy_resets_the_count_and_bounds_what_it_adds() -> None:
    headers = {"redelivery_count": 2**63 - 1, "requeue_count": 2**63 - 1, "failure_message": "m" * 50_000,
               "failure_attempts": -(2**63), "failure_stack": "s" * 50_000, "failure_type": b"\xff"}
    properties = copy_properties(spec.Basic.Properties(), letter(b"body", headers=headers))
    copied = properties.headers
    assert copied is not None
    assert copied["redelivery_count"] == 0 and copied["requeue_count"] == 1_000_001
    previous = copied["previous_failure"]
    assert len(previous["message"]) < 1_100 and "stack" not in previous
    assert previous["attempts"] == -(2**63) and previous["type"] == "\ufffd"
    assert properties.message_id == fingerprint(b"body")  # none: the fingerprint, not a random id
    assert frame_size(properties) < 2_000
    negative = copy_properties(spec.Basic.Properties(), letter(headers={"requeue_count": -5}))
    assert negative.headers is not None and negative.headers["requeue_count"] == 1


def test_a_copy_too_large_for_a_frame_is_refused() -> None:
    headers = {"x-pad": "p" * 131_000}
    with pytest.raises(CopyProblem, match="frame_max of 131,072 bytes"):
        copy_properties(spec.Basic.Properties(), letter(headers=headers), frame_max=131_072)
    assert copy_properties(spec.Basic.Properties(), letter(headers=headers), frame_max=262_144)
