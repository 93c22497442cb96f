"""``eventyard outbox``: apply the outbox schema, run a relay, count what waits (extra outbox)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eventyard.cli.common import RUNTIME_ERROR, Url, err, fail, out, reported, settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

app = typer.Typer(name="outbox", help="The transactional outbox on PostgreSQL (extra outbox).",
                  no_args_is_help=True)

DATABASE_ENV = "EVENTYARD_DATABASE_URL"
Database = Annotated[str, typer.Option(
    "--db", envvar=DATABASE_ENV, show_default=False,
    help=f"PostgreSQL URL (postgresql://user@host:5432/name); default: {DATABASE_ENV}.")]


def _engine(url: str) -> tuple[AsyncEngine, str]:
    """An asyncpg engine for ``url`` and its description without the password."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
        from sqlalchemy.ext.asyncio import create_async_engine
    except ModuleNotFoundError:
        fail("eventyard outbox needs the outbox extra: pip install 'eventyard[outbox]'")
    try:
        parsed = make_url(url)
    except ArgumentError:
        fail("--db must be a PostgreSQL URL such as postgresql://user@host:5432/name")
    if parsed.get_backend_name() != "postgresql":
        fail(f"--db must be a PostgreSQL URL, not {parsed.get_backend_name()}")
    parsed = parsed.set(drivername="postgresql+asyncpg")
    shown = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
    return create_async_engine(parsed, pool_pre_ping=True), shown


def _run(shown: str, work: Any) -> Any:
    """``asyncio.run(work)``; a database that cannot be reached or refuses is one line."""
    from asyncpg import InterfaceError, PostgresError  # type: ignore[import-untyped]
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return asyncio.run(work)
    except (OSError, SQLAlchemyError, PostgresError, InterfaceError) as error:
        cause = getattr(error, "orig", None) or error
        fail(f"database {shown}: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}",
             RUNTIME_ERROR)


@app.command()
def schema(db: Database, print_only: Annotated[bool, typer.Option(
        "--print", help="Print the SQL instead of applying it.")] = False) -> None:
    """Create the outbox and inbox tables if missing (idempotent)."""
    with reported():
        from eventyard import outbox

        if print_only:
            out.print(outbox.schema_sql(), markup=False, highlight=False, soft_wrap=True)
            return
        engine, shown = _engine(db)
        _run(shown, _apply(engine))
    out.print(f"outbox schema applied on {shown}", soft_wrap=True)


async def _apply(engine: AsyncEngine) -> None:
    from eventyard.outbox import apply_schema_async

    try:
        await apply_schema_async(engine)
    finally:
        await engine.dispose()


@app.command()
def pending(db: Database) -> None:
    """Print how many stored messages wait for a relay."""
    with reported():
        engine, shown = _engine(db)
        out.print(str(_run(shown, _pending(engine))))


async def _pending(engine: AsyncEngine) -> int:
    from eventyard.outbox import pending_count

    try:
        return await pending_count(engine)
    finally:
        await engine.dispose()


@app.command()
def relay(
    db: Database,
    url: Url = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=100_000,
                                            help="Messages per batch (one transaction).")] = 500,
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", min=0.01, help="Seconds between polls when no NOTIFY comes.")] = 5.0,
    retention: Annotated[float, typer.Option(
        "--retention", min=1.0, help="Seconds a sent row is kept before clean-up.")] = 7 * 24 * 3600.0,
) -> None:
    """Publish the outbox's messages to RabbitMQ until SIGINT or SIGTERM."""
    with reported():
        from eventyard.outbox import OutboxRelay, RelaySettings
        from eventyard.rabbitmq import RabbitMqConnector

        relay_settings = RelaySettings(batch_size=batch_size, poll_interval=poll_interval,
                                       retention=retention)
        connection = settings(url)
        engine, shown = _engine(db)

        async def run() -> int:
            try:  # fail fast, as for the broker: later the relay waits and retries
                async with engine.connect():
                    pass
            except BaseException:
                await engine.dispose()
                raise
            async with RabbitMqConnector(settings=connection) as connector:
                worker = OutboxRelay(engine, connector.publisher_transport, relay_settings)
                await connector.publisher_transport()  # fail fast when the broker is not there
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, _stopper(worker))
                err.print(f"relaying {shown} to {connection.describe()}", soft_wrap=True)
                try:
                    await worker.start()
                finally:
                    await engine.dispose()
                return worker.published

        published = _run(shown, run())
    out.print(f"published {published}", soft_wrap=True)


def _stopper(worker: Any) -> Any:
    def stop() -> None:
        asyncio.get_running_loop().create_task(worker.stop())
    return stop
