"""``eventyard topology show/verify`` and a subscriber with a retry policy of its own: the delay
ladder is shown, declared and verified like the rest."""

from __future__ import annotations

import asyncio
import json

import aiormq
import pytest
from typer.testing import CliRunner

from cli import cliapp
from cli.conftest import Service
from eventyard import MessageSubscriber, RetryPolicy, naming
from eventyard.cli.main import app
from eventyard.retry import DELAY_LEVELS_MS

pytestmark = pytest.mark.rabbitmq

APP = "cli.test_cli_retry_topology:subscribers"


def subscribers() -> list[MessageSubscriber]:
    """The CLI application's subscriber, with exponential backoff."""
    return [MessageSubscriber.from_message(cliapp.UserCreated, [cliapp.mail_handler(fail=False)],
                                           retry=RetryPolicy.exponential())]


def invoke(service: Service, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"RABBITMQ_URL": service.url, "COLUMNS": "200"}).invoke(app, list(args))
    return result.exit_code, result.stdout


def test_show_declare_and_verify_the_delay_ladder(service: Service) -> None:
    names = ["-o", service.org, "-s", "registration", "--no-store"]
    code, out = invoke(service, "configure", APP, *names)
    assert code == 0, out
    show_code, shown = invoke(service, "topology", "show", APP, *names, "--json")
    assert show_code == 0
    topology = json.loads(shown)
    ladder = [naming.delay_queue(service.org, "registration", ms) for ms in DELAY_LEVELS_MS]
    assert [q["name"] for q in topology["queues"] if q["name"].startswith("delay.")] == ladder
    assert naming.delay_exchange(service.org, "registration") in [e["name"] for e in topology["exchanges"]]
    bindings = {(b["exchange"], b["queue"], b["routing_key"]) for b in topology["bindings"]}
    queue = cliapp.queue(service.org)
    assert (naming.exchange(service.org, "registration"), queue,
            naming.delay_return_binding(queue)) in bindings
    assert bindings == service.inspector.bindings(service.org)
    declared = service.inspector.queues(service.org)
    assert {name: declared[name]["x-message-ttl"] for name in ladder} == dict(
        zip(ladder, DELAY_LEVELS_MS, strict=True))

    ok_code, ok = invoke(service, "topology", "verify", APP, *names)
    assert ok_code == 0 and "OK" in ok

    async def delete_one_level() -> None:
        connection = await aiormq.connect(service.url)
        try:
            await (await connection.channel()).queue_delete(ladder[3])
        finally:
            await connection.close()

    asyncio.run(delete_one_level())
    bad_code, bad = invoke(service, "topology", "verify", APP, *names, "--json")
    assert bad_code == 1
    (difference,) = json.loads(bad)["differences"]
    assert (difference["name"], difference["problem"]) == (ladder[3], "missing")
