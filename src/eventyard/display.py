"""Values from a message shown to an operator: bounded, printable and JSON-ready.

Headers and bodies come from anyone allowed to publish: whatever their type, size or nesting,
what is shown of them is bounded text a terminal cannot be tricked by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

PREVIEW_CHARS = 60
TEXT_LIMIT = 8_000  # a failure header read for display (the consumer writes at most 4,000)
DEPTH_LIMIT = 16  # nested header tables shown deeper than this are summarised


def cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def printable(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal: control, format and invisible characters escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _summary(value: Any) -> str:
    try:
        return json.dumps(jsonable(value), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return f"({type(value).__name__})"


def header_text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """A header value as bounded text, whatever its type (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        text = bytes(value[:limit * 4]).decode(errors="replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Mapping | list | tuple):
        text = _summary(value)
    else:
        text = str(value)
    return cut(text, limit)


def header_int(value: Any) -> int | None:
    """A header value as an integer; None when it is not one (``"abc"``, a table, a float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = header_text(value, 40)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None



def preview(body: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The start of ``body`` as printable text (bytes that are not UTF-8 shown as ``\\xNN``)."""
    chunk = body[:limit * 4]  # a character is at most 4 bytes: enough for ``limit`` of them
    text = chunk.decode(errors="backslashreplace")
    cut = len(text) > limit or len(body) > len(chunk)
    return printable(text[:limit]) + ("…" if cut else "")


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` (AMQP header values: bytes, datetimes, tables) as plain JSON types.

    Tables nested deeper than 16 levels become ``"(nested deeper than 16 levels)"``, and
    non-finite floats strings, so the result always serialises.
    """
    if isinstance(value, Mapping | list | tuple) and depth >= DEPTH_LIMIT:
        return f"(nested deeper than {DEPTH_LIMIT} levels)"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
