"""Waiting on a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0,
               what: str | Callable[[], str] = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds.

    ``what`` names the condition in the failure; a callable is called then, to describe the state.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        time.sleep(0.02)
