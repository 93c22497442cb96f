"""Headers read as untrusted input: counts clamped, values made sendable, copies that fit a frame."""

from __future__ import annotations

import datetime
import decimal
import re
from typing import Any

import pamqp.encode
import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.header import ContentHeader

from eventyard.headers import DEFAULT_FRAME_MAX, encodable, header_budget, table_size
from eventyard.retry import (
    FAILURE_ATTEMPTS,
    FAILURE_FIRST_AT,
    FAILURE_HEADERS_DROPPED,
    FAILURE_MESSAGE,
    FAILURE_ROUTING_KEY,
    FAILURE_STACK,
    FAILURE_TYPE,
    MAX_REDELIVERY_COUNT,
    REDELIVERY_COUNT,
    failure_headers,
    redelivery_count,
)
from eventyard.subscribers import outcome_of_exception


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(depth):
        table = {"a": table}
    return table


HOSTILE: dict[str, Any] = {
    "huge_int": 2**80, "low_int": -(2**70), "max": 2**63 - 1, "min": -(2**63),
    "bytes": b"\xff\xfe", "bytearray": bytearray(b"\x00"), "memoryview": memoryview(b"ab"),
    "big_float": 1e300, "inf": float("inf"), "small_float": 1.5,
    "decimal_ok": decimal.Decimal("1.25"), "decimal_big": decimal.Decimal("1e300"),
    "decimal_nan": decimal.Decimal("NaN"), "decimal_exp": decimal.Decimal("1E+3"),
    "year_one": datetime.datetime(1, 1, 1), "now": datetime.datetime(2030, 1, 1),
    "aware": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
    "tuple": (1, "a", (2, 3)), "list": [1, [2, {"x": b"\xff"}]], "nested": _nested(200),
    "surrogate": "\udcff", "k" * 300: "long key", "é" * 100: "multibyte key",
    "none": None, "bool": True, "object": Unprintable(), "set": {1, 2},
}


def test_encodable_values_are_sent_by_the_amqp_client_and_sized_exactly() -> None:
    table = encodable({**HOSTILE, 7: "int key", None: "none key"})
    encoded = pamqp.encode.field_table(table)  # raises on anything it cannot send
    assert table_size(table) == len(encoded)
    assert table["huge_int"] == str(2**80) and table["max"] == 2**63 - 1
    assert table["bytes"] == bytearray(b"\xff\xfe")
    assert table["big_float"] == "1e+300" and table["year_one"] == "0001-01-01T00:00:00"
    assert table["decimal_big"] == "1E+300" and table["object"] == "<Unprintable>"
    assert "nested deeper than" in str(table["nested"])


@pytest.mark.parametrize(("value", "count"), [
    (None, 0), (3, 3), (2**63 - 1, MAX_REDELIVERY_COUNT), (2**80, MAX_REDELIVERY_COUNT),
    (-5, 0), ("4", 4), (" 2 ", 2), (b"6", 6), (bytearray(b"1"), 1), ("abc", 0), ("9" * 5000, 0),
    (b"\xff", 0), (2.7, 2), (-1.5, 0), (float("nan"), 0), (float("inf"), MAX_REDELIVERY_COUNT),
    (decimal.Decimal("3.9"), 3), (True, 0), (False, 0), ({"a": 1}, 0), ([1], 0),
    (datetime.datetime(2030, 1, 1), 0),
])
def test_redelivery_count_is_clamped_and_never_raises(value: Any, count: int) -> None:
    headers = {} if value is None else {REDELIVERY_COUNT: value}
    assert redelivery_count(headers) == count


def _failure() -> Any:
    try:
        raise RuntimeError("mail is down " + "m" * 9000)
    except RuntimeError as error:
        return outcome_of_exception(error)


def _header_frame_size(headers: dict[str, Any]) -> int:
    """The bytes of the content-header frame of a copy with ``headers``, as the client sends it."""
    properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2,
                                       message_id="m" * 255, message_type="t" * 255,
                                       timestamp=datetime.datetime(2030, 1, 1), headers=headers)
    return len(pamqp.frame.marshal(ContentHeader(0, 10, properties), 1))


@pytest.mark.parametrize("count", [2**63 - 1, -1, "x", 2.5, True, {"t": 1}, b"\xff"])
def test_a_forged_count_gives_sendable_failure_headers(count: Any) -> None:
    headers = failure_headers({REDELIVERY_COUNT: count}, _failure(), queue="q", routing_key="k",
                              retries=redelivery_count({REDELIVERY_COUNT: count}) + 1)
    pamqp.encode.field_table(headers)
    assert 1 <= headers[FAILURE_ATTEMPTS] <= MAX_REDELIVERY_COUNT + 1


def test_failure_headers_replace_forged_failure_headers() -> None:
    headers = failure_headers({FAILURE_FIRST_AT: {"a": 1}, FAILURE_ROUTING_KEY: "r" * 5000,
                               FAILURE_ATTEMPTS: "many", FAILURE_TYPE: b"\xff"},
                              _failure(), queue="q", routing_key="k", retries=1)
    assert isinstance(headers[FAILURE_FIRST_AT], str) and headers[FAILURE_ROUTING_KEY] == "k"
    assert (headers[FAILURE_ATTEMPTS], headers[FAILURE_TYPE]) == (1, "RuntimeError")


def test_small_headers_keep_the_whole_failure() -> None:
    headers = failure_headers({"traceparent": "00-abc"}, _failure(), queue="q", routing_key="k",
                              retries=1)
    assert headers["traceparent"] == "00-abc"
    assert len(headers[FAILURE_MESSAGE]) == 4000 and "RuntimeError" in headers[FAILURE_STACK]
    assert FAILURE_HEADERS_DROPPED not in headers


@pytest.mark.parametrize("frame_max", [DEFAULT_FRAME_MAX, 4096, 1 << 20])
@pytest.mark.parametrize("original", [0.5, 0.97, 0.995, 1.0, 3.0])
def test_the_copy_always_fits_the_frame(frame_max: int, original: float) -> None:
    size = int(frame_max * original)
    big = {"trace": "t", "blob": "b" * max(0, size - 64), "tiny": 1}
    limit = header_budget(frame_max)
    headers = failure_headers(big, _failure(), queue="q" * 255, routing_key="k" * 255, retries=1,
                              limit=limit)
    assert table_size(headers) <= limit
    assert _header_frame_size(headers) <= frame_max
    if table_size(encodable(big)) + 600 < limit:
        assert FAILURE_HEADERS_DROPPED not in headers and headers["blob"] == big["blob"]
    elif FAILURE_HEADERS_DROPPED in headers:
        assert "blob" in headers[FAILURE_HEADERS_DROPPED] and "blob" not in headers
        assert headers["trace"] == "t" and headers["tiny"] == 1  # small ones are kept
    assert headers[FAILURE_TYPE] == "RuntimeError" and headers[REDELIVERY_COUNT] == 1


def test_the_stack_and_message_are_trimmed_before_any_header_is_dropped() -> None:
    limit = header_budget(DEFAULT_FRAME_MAX)
    big = {"blob": "b" * (limit - 3000)}
    headers = failure_headers(big, _failure(), queue="q", routing_key="k", retries=1, limit=limit)
    assert headers["blob"] == big["blob"] and FAILURE_HEADERS_DROPPED not in headers
    assert len(headers[FAILURE_MESSAGE]) < 4000


def test_many_small_headers_are_summarised_by_name() -> None:
    many = {f"h{i}": "v" * 100 for i in range(2000)}
    headers = failure_headers(many, _failure(), queue="q", routing_key="k", retries=1)
    assert table_size(headers) <= header_budget(DEFAULT_FRAME_MAX)
    assert re.match(r"\d+ of 2000 headers \(\d+ bytes\) left out", headers[FAILURE_HEADERS_DROPPED])
    assert len(headers[FAILURE_HEADERS_DROPPED]) <= 2000


def test_without_keep_headers_only_a_summary_travels() -> None:
    headers = failure_headers({"trace": "t", "blob": "b" * 1000}, _failure(), queue="q",
                              routing_key="k", retries=1, keep_headers=False)
    assert headers["trace"] == "t" and "blob" not in headers
    assert "blob" in headers[FAILURE_HEADERS_DROPPED]
