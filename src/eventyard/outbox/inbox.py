"""The idempotent inbox: a handler's run and the record that it ran commit together.

``@idempotent(sessions)`` wraps a handler: it opens a session, inserts (handler, message id)
into ``eventyard_inbox`` and runs the handler with that session (``current_session()``). On
success both commit at once; on failure (an exception, ``False``, a ``Failure``) both roll
back, so a retry runs the handler again. A redelivered message whose row exists is acked
without running the handler. A second copy delivered while the first runs waits on the row's
lock, then finds it (or, if the first failed, runs).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from eventyard.errors import ConfigurationError
from eventyard.messages import Message
from eventyard.outbox.base import (
    check_window,
    current_session,
    handler_key,
    message_of,
    run_in_session,
    run_in_session_async,
    skipped,
)

__all__ = ["current_session", "idempotent", "purge_inbox"]

F = TypeVar("F", bound=Callable[..., Any])

_CLAIM = text("INSERT INTO eventyard_inbox (handler, message_id) VALUES (:handler, :message_id) "
              "ON CONFLICT DO NOTHING RETURNING 1")
_EXPIRE = text("DELETE FROM eventyard_inbox WHERE handled_at < now() - make_interval(secs => :age)")

def idempotent(sessions: sessionmaker[Any] | async_sessionmaker[Any], *,
               name: str | None = None) -> Callable[[F], F]:
    """Run the decorated handler at most once per message id (successful runs only count).

    ``sessions`` makes the sessions it runs in: a ``sessionmaker`` for a sync handler, an
    ``async_sessionmaker`` for an ``async def`` one. ``name`` identifies the handler in the
    inbox (default: its module and qualified name); keep it stable across deployments.
    """

    def decorate(handler: F) -> F:
        key = handler_key(handler, name)
        if inspect.iscoroutinefunction(handler):
            if not isinstance(sessions, async_sessionmaker):
                raise ConfigurationError(f"async handler {key} needs an async_sessionmaker")

            @functools.wraps(handler)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                message = message_of(args, key)
                async with sessions() as session:
                    claimed = (await session.execute(_CLAIM, _params(key, message))).first()
                    if claimed is None:
                        await session.rollback()
                        skipped(key, message)
                        return None
                    return await run_in_session_async(session, handler, args, kwargs)

            return run_async  # type: ignore[return-value]
        if not isinstance(sessions, sessionmaker):
            raise ConfigurationError(f"sync handler {key} needs a sessionmaker (psycopg engine)")

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            message = message_of(args, key)
            with sessions() as session:
                if session.execute(_CLAIM, _params(key, message)).first() is None:
                    session.rollback()
                    skipped(key, message)
                    return None
                return run_in_session(session, handler, args, kwargs)

        return run  # type: ignore[return-value]

    return decorate


def _params(key: str, message: Message) -> dict[str, str]:
    return {"handler": key, "message_id": str(message.get_message_id())}


async def purge_inbox(engine: AsyncEngine, window: float) -> int:
    """Delete inbox rows older than ``window`` seconds; return how many went.

    After that, a copy of such a message would run its handler again: keep the window longer
    than any redelivery can take (retries, dead-letter requeues).
    """
    age = check_window(window)
    async with engine.begin() as connection:
        result = await connection.execute(_EXPIRE, {"age": age})
    return int(getattr(result, "rowcount", 0) or 0)
