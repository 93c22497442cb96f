"""The idempotent inbox: a handler's run and the record that it ran commit together.

``@idempotent(sessions)`` wraps a handler: it opens a session, inserts (handler, message id)
into ``eventyard_inbox`` and runs the handler with that session (``current_session()``). On
success both commit at once; on failure (an exception, ``False``, a ``Failure``) both roll
back, so a retry runs the handler again. A redelivered message whose row exists is acked
without running the handler. A second copy delivered while the first runs waits on the row's
lock, then finds it (or, if the first failed, runs).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from eventyard.errors import ConfigurationError
from eventyard.messages import Message
from eventyard.subscribers import outcome_of

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_CLAIM = text("INSERT INTO eventyard_inbox (handler, message_id) VALUES (:handler, :message_id) "
              "ON CONFLICT DO NOTHING RETURNING 1")
_EXPIRE = text("DELETE FROM eventyard_inbox WHERE handled_at < now() - make_interval(secs => :age)")

_SESSION: contextvars.ContextVar[Session | AsyncSession | None] = contextvars.ContextVar(
    "eventyard_inbox_session", default=None)


def current_session() -> Any:
    """The session of the idempotent handler running now (its writes commit with its record)."""
    session = _SESSION.get()
    if session is None:
        raise ConfigurationError("current_session() is only available inside a handler "
                                 "decorated with @idempotent(...)")
    return session


def idempotent(sessions: sessionmaker[Any] | async_sessionmaker[Any], *,
               name: str | None = None) -> Callable[[F], F]:
    """Run the decorated handler at most once per message id (successful runs only count).

    ``sessions`` makes the sessions it runs in: a ``sessionmaker`` for a sync handler, an
    ``async_sessionmaker`` for an ``async def`` one. ``name`` identifies the handler in the
    inbox (default: its module and qualified name); keep it stable across deployments.
    """

    def decorate(handler: F) -> F:
        key = name or f"{handler.__module__}.{handler.__qualname__}"
        if not isinstance(key, str) or not key or len(key) > 500:
            raise ConfigurationError(f"idempotent handler name must be 1..500 characters: {key!r}")
        if inspect.iscoroutinefunction(handler):
            if not isinstance(sessions, async_sessionmaker):
                raise ConfigurationError(f"async handler {key} needs an async_sessionmaker")

            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                message = _message_of(args, key)
                async with sessions() as session:
                    claimed = (await session.execute(_CLAIM, _params(key, message))).first()
                    if claimed is None:
                        await session.rollback()
                        _skipped(key, message)
                        return None
                    token = _SESSION.set(session)
                    try:
                        result = await handler(*args, **kwargs)
                    except BaseException:
                        await session.rollback()
                        raise
                    finally:
                        _SESSION.reset(token)
                    if outcome_of(result).success:
                        await session.commit()
                    else:
                        await session.rollback()
                    return result

            return run_async  # type: ignore[return-value]
        if not isinstance(sessions, sessionmaker):
            raise ConfigurationError(f"sync handler {key} needs a sessionmaker (psycopg engine)")

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            message = _message_of(args, key)
            with sessions() as session:
                if session.execute(_CLAIM, _params(key, message)).first() is None:
                    session.rollback()
                    _skipped(key, message)
                    return None
                token = _SESSION.set(session)
                try:
                    result = handler(*args, **kwargs)
                except BaseException:
                    session.rollback()
                    raise
                finally:
                    _SESSION.reset(token)
                if outcome_of(result).success:
                    session.commit()
                else:
                    session.rollback()
                return result

        return run  # type: ignore[return-value]

    return decorate


def _message_of(args: tuple[Any, ...], key: str) -> Message:
    message = args[-1] if args else None
    if not isinstance(message, Message):
        raise ConfigurationError(f"idempotent handler {key} was called without a message")
    return message


def _params(key: str, message: Message) -> dict[str, str]:
    return {"handler": key, "message_id": str(message.get_message_id())}


def _skipped(key: str, message: Message) -> None:
    logger.info("%s already handled %s %s: acked without running it", key,
                message.get_message_name(), message.get_message_id())


async def purge_inbox(engine: AsyncEngine, window: float) -> int:
    """Delete inbox rows older than ``window`` seconds; return how many went.

    After that, a copy of such a message would run its handler again: keep the window longer
    than any redelivery can take (retries, dead-letter requeues).
    """
    if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
        raise ConfigurationError(f"inbox window must be a positive number of seconds, got {window!r}")
    async with engine.begin() as connection:
        result = await connection.execute(_EXPIRE, {"age": float(window)})
    return int(getattr(result, "rowcount", 0) or 0)
