"""Handler outcomes: every way a handler run can end, as success or a failure with its reason."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from meiga import Result

from eventyard.errors import InvalidHandlerResult


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler run came to: success, or a failure with its reason."""

    success: bool
    error_type: str = ""
    error_message: str = ""
    exception: BaseException | None = None


SUCCESS = Outcome(True)
_NAME_LIMIT = 255
_REPR_LIMIT = 100
_MESSAGE_LIMIT = 10_000  # of an error's text: logs and headers hold no more


def outcome_of(returned: Any) -> Outcome:
    """The outcome a handler's return value stands for; the rules are strict (DESIGN §2).

    Success: ``None``, ``True``, a meiga ``Success`` (of any value but another result or an
    awaitable). Failure: ``False``, a meiga ``Failure``. Anything else (a string, a number, 0
    and 1 included, a coroutine nobody awaited, a nested result such as ``Success(Failure(...))``
    or ``Success(Success(...))``) is a failure of type ``InvalidHandlerResult``: a handler that
    means success must say so, not return something that happens to look true.
    """
    if returned is None or returned is True:
        return SUCCESS
    if returned is False:
        return Outcome(False, "HandlerReturnedFalse", "handler returned False")
    if isinstance(returned, Result):
        if returned.is_success:
            inner = returned.value
            if isinstance(inner, Result) or inspect.isawaitable(inner):
                return _invalid(returned, f"a nested result, Success({_describe(inner)}); "
                                          "return the inner result itself")
            return SUCCESS
        error = returned.value
        if isinstance(error, BaseException):
            return outcome_of_exception(error)
        return Outcome(False, type(error).__name__[:_NAME_LIMIT], _error_text(error))
    if inspect.isawaitable(returned):
        return _invalid(returned, f"{_describe(returned)} that nobody awaited")
    return _invalid(returned, _describe(returned))


def _invalid(returned: Any, what: str) -> Outcome:
    if inspect.iscoroutine(returned):
        returned.close()  # never awaited on purpose: no "never awaited" warning later
    elif isinstance(returned, Result) and inspect.iscoroutine(returned.value):
        returned.value.close()
    error = InvalidHandlerResult(
        f"handler returned {what}; return None, True or Success on success, and False, "
        "Failure or raise on failure")
    return Outcome(False, "InvalidHandlerResult", str(error), error)


def _describe(value: Any) -> str:
    if inspect.iscoroutine(value):
        return "a coroutine"
    try:
        text = repr(value)
    except Exception:  # a repr that raises: the type says enough
        text = "?"
    if len(text) > _REPR_LIMIT:
        text = text[:_REPR_LIMIT] + "..."
    return f"{type(value).__name__} {text}"


def _error_text(error: Any) -> str:
    try:
        text = getattr(error, "message", None) or str(error) or repr(error)
        return str(text)[:_MESSAGE_LIMIT]
    except Exception:  # an error object whose str or message raises: its type says enough
        return f"({type(error).__name__} that cannot be shown as text)"


def outcome_of_exception(exception: BaseException) -> Outcome:
    """The failure a raised exception (``BaseException`` included) stands for."""
    return Outcome(False, type(exception).__name__[:_NAME_LIMIT], _error_text(exception),
                   exception)
