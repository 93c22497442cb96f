"""What two runs of a scenario may differ in, and nothing else: ids and times.

``normalised`` turns an observation into plain data in which every scalar carries its type
(``1``, ``1.0`` and ``True`` are equal in Python; on the wire they are not), the time a broker
did something becomes its type, every id a token numbered in order of appearance (so "the same id twice"
still compares), and the failure headers' time stamps a placeholder.
"""

from __future__ import annotations

import datetime
import decimal
import re
from typing import Any

_ID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_TIMES = {"failure_first_at", "failure_last_at", "occurred_on", "time"}


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def token(self, value: str) -> str:
        return self.seen.setdefault(value, f"<id {len(self.seen) + 1}>")


def normalised(value: Any) -> Any:
    """``value`` with what legitimately differs between brokers made equal (see the module)."""
    return _walk(value, _Ids())


def _walk(value: Any, ids: _Ids, key: str = "") -> Any:
    if key in _TIMES and isinstance(value, str):
        return "<time>"
    if key in _TIMES and isinstance(value, datetime.datetime):  # when the broker did it
        return f"<datetime, tz={value.tzinfo}>"
    if isinstance(value, dict):
        return {k: _walk(v, ids, k if isinstance(k, str) else "") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(item, ids) for item in value]
    if isinstance(value, str):
        return _ID.sub(lambda found: ids.token(found.group()), value)
    if value is None:
        return None
    if isinstance(value, bool | int | float | decimal.Decimal | bytes | bytearray):
        return (type(value).__name__, value)
    return (type(value).__name__, repr(value))
