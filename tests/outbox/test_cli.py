"""``eventyard outbox``: schema, pending, and the errors of a bad database URL."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from eventyard.cli.main import app
from eventyard.outbox import Outbox

from .conftest import Database, OrderPlaced

runner = CliRunner()


def test_schema_applies_twice_and_pending_counts_what_waits(database: Database,
                                                            sync_engine: Engine) -> None:
    for _ in range(2):
        result = runner.invoke(app, ["outbox", "schema", "--db", database.plain_url])
        assert result.exit_code == 0, result.output
        assert f"outbox schema applied on {database.plain_url}" in result.output
    with Session(sync_engine) as session, session.begin():
        Outbox("acme", "shop").publish(session, [OrderPlaced(order=1), OrderPlaced(order=2)])
    result = runner.invoke(app, ["outbox", "pending", "--db", database.plain_url])
    assert (result.exit_code, result.output) == (0, "2\n")
    with sync_engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM eventyard_inbox")) == 0


def test_schema_print_shows_the_shipped_sql() -> None:
    result = runner.invoke(app, ["outbox", "schema", "--print", "--db", "postgresql://x@h/d"])
    assert result.exit_code == 0
    assert "CREATE TABLE IF NOT EXISTS eventyard_outbox" in result.output
    assert "FOR EACH STATEMENT" in result.output


def test_a_database_url_that_is_not_postgresql_is_a_usage_error() -> None:
    for url in ("sqlite:///x.db", "not a url"):
        result = runner.invoke(app, ["outbox", "pending", "--db", url])
        assert result.exit_code == 2, result.output
        assert "--db must be a PostgreSQL URL" in result.output


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    result = runner.invoke(app, ["outbox", "pending", "--db",
                                 "postgresql://someone:s3cret@127.0.0.1:1/nowhere"])
    assert result.exit_code == 1
    assert "Error: database postgresql://someone:***@127.0.0.1:1/nowhere:" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_the_relay_fails_fast_when_the_database_is_unreachable() -> None:
    result = runner.invoke(app, ["outbox", "relay", "--db",
                                 "postgresql://someone:s3cret@127.0.0.1:1/nowhere",
                                 "--url", "amqp://guest:guest@127.0.0.1:1/"])
    assert result.exit_code == 1, result.output
    assert "Error: database postgresql://someone:***@127.0.0.1:1/nowhere:" in result.output
    assert "s3cret" not in result.output


def test_a_database_that_refuses_the_role_is_one_line(database: Database) -> None:
    url = database.plain_url.replace("postgres@", "no_such_role@", 1)
    result = runner.invoke(app, ["outbox", "pending", "--db", url])
    assert result.exit_code == 1, result.output
    assert f"Error: database {url}: " in result.output
    assert 'role "no_such_role" does not exist' in result.output
