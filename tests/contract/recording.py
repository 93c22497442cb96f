"""Handlers that remember their runs, for the contract tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from eventyard.messages import Message


class Runs:
    """Thread-safe log of (handler, message) runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[tuple[str, Message]] = []

    def add(self, name: str, message: Message) -> None:
        with self._lock:
            self._runs.append((name, message))

    def of(self, name: str) -> list[Message]:
        with self._lock:
            return [m for n, m in self._runs if n == name]

    def count(self, name: str) -> int:
        return len(self.of(name))


def failing(runs: Runs, name: str, fail_times: int | None = None) -> Callable[[Any], Any]:
    """A sync handler called ``name`` that raises on its first ``fail_times`` runs (always if None)."""

    def handler(message: Message) -> None:
        runs.add(name, message)
        if fail_times is None or runs.count(name) <= fail_times:
            raise RuntimeError(f"{name} failed on run {runs.count(name)}")

    handler.__name__ = handler.__qualname__ = name
    return handler


def recording(runs: Runs, name: str, *, is_async: bool = False) -> Callable[[Any], Any]:
    """A handler called ``name`` that records its runs and succeeds."""
    if is_async:
        async def async_handler(message: Message) -> None:
            runs.add(name, message)

        async_handler.__name__ = async_handler.__qualname__ = name
        return async_handler

    def handler(message: Message) -> bool:
        runs.add(name, message)
        return True

    handler.__name__ = handler.__qualname__ = name
    return handler
