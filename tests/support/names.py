"""Names the tests make up, each unique, and remembered for the end-of-session check.

A name made here (an organisation, a vhost, a user) is in every queue, exchange, vhost or user
a test derives from it, so the session can tell its own leftovers from those of other runs
sharing the broker (``nothing_left_on_the_broker`` in tests/conftest.py).
"""

from __future__ import annotations

import threading
import uuid

_lock = threading.Lock()
_issued: set[str] = set()


def unique(prefix: str = "t", digits: int = 10) -> str:
    """``prefix`` and ``digits`` random hex digits, remembered as this session's."""
    name = f"{prefix}{uuid.uuid4().hex[:digits]}"
    with _lock:
        _issued.add(name)
    return name


def issued() -> frozenset[str]:
    """Every name ``unique`` made in this session."""
    with _lock:
        return frozenset(_issued)
