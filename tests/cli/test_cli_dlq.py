"""``eventyard dlq``: list, show, requeue, discard, dump against the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.conftest import Service
from eventyard.cli.main import app

pytestmark = pytest.mark.rabbitmq


def invoke(service: Service, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """Run ``eventyard`` in this process against the test broker."""
    runner = CliRunner(env={"RABBITMQ_URL": service.url, "COLUMNS": "200"})
    result = runner.invoke(app, [str(a) for a in args], input=input)
    return result.exit_code, result.stdout, result.stderr


def where(service: Service) -> list[str]:
    return ["-o", service.org, "-s", "registration", "-q", service.dead_letter_queue]


def test_list_counts_dead_letters_by_type_and_error(service: Service) -> None:
    service.dead_letter(3)

    code, out, _ = invoke(service, "dlq", "list", *where(service), "--json")
    text_code, text, _ = invoke(service, "dlq", "list", "-o", service.org, "-s", "registration",
                                "--app", "cli.cliapp:subscribers", "--no-store")

    assert code == 0 and text_code == 0
    (summary,) = json.loads(out)
    group = summary["groups"][0]
    assert 3 * 200 < group.pop("bytes") < 3 * 400  # three ~235-byte bodies
    assert summary == {"queue": service.dead_letter_queue, "exists": True, "count": 3, "inspected": 3,
                       "undecodable": 0, "groups": [{"type": "user.created", "error": "MailServerDown",
                                                     "undecodable": False, "count": 3}]}
    assert service.dead_letter_queue in text and "MailServerDown" in text and "user.created" in text
    assert service.count(service.dead_letter_queue) == 3


def test_show_prints_each_failure_and_leaves_the_messages(service: Service) -> None:
    ids = service.dead_letter(2)

    code, out, _ = invoke(service, "dlq", "show", *where(service), "--json")
    text_code, text, _ = invoke(service, "dlq", "show", *where(service), "--stack")

    assert code == 0 and text_code == 0
    letters = json.loads(out)
    assert sorted(letter["message_id"] for letter in letters) == sorted(ids)
    for letter in letters:
        failure = letter["failure"]
        assert failure["type"] == "MailServerDown"
        assert failure["message"].startswith("smtp timeout for ")
        assert failure["attempts"] == 2
        assert failure["queue"] == service.queue
        assert failure["routing_key"] == f"{service.org}.registration.1.event.user_created"
        assert failure["first_at"] and failure["last_at"] and failure["host"]
        assert json.loads(letter["body"])["data"]["id"] == letter["message_id"]
    assert "MailServerDown" in text and "smtp timeout for" in text and "Traceback" in text
    assert service.count(service.dead_letter_queue) == 2


def test_requeue_by_id_moves_only_that_message(service: Service) -> None:
    first, second, third = service.dead_letter(3)

    code, out, _ = invoke(service, "dlq", "requeue", *where(service), "--id", second, "--json")

    assert code == 0
    summary = json.loads(out)
    assert summary["counts"]["requeued"] == 1 and summary["counts"]["skipped"] == 2
    assert [s["message_id"] for s in summary["steps"] if s["outcome"] == "requeued"] == [second]
    assert service.consume(fail=False, until=1) == [second]
    assert sorted(service.take_ids(service.dead_letter_queue)) == sorted([first, third])


def test_requeue_by_type_and_dry_run(service: Service) -> None:
    ids = service.dead_letter(2)

    dry_code, dry, _ = invoke(service, "dlq", "requeue", *where(service), "--dry-run", "--json")
    other_code, other, _ = invoke(service, "dlq", "requeue", *where(service), "--type", "user.deleted",
                                  "--json")
    assert dry_code == 0 and other_code == 0
    assert json.loads(dry)["counts"]["would_requeue"] == 2
    assert json.loads(other)["counts"] == {"requeued": 0, "would_requeue": 0, "skipped": 2, "failed": 0,
                                           "discarded": 0}
    assert service.count(service.dead_letter_queue) == 2 and service.count(service.retry_queue) == 0

    code, out, _ = invoke(service, "dlq", "requeue", *where(service), "--type", "user.created")
    assert code == 0 and "requeued" in out
    assert sorted(service.consume(fail=False, until=2)) == sorted(ids)
    assert service.count(service.dead_letter_queue) == 0


def test_requeue_that_cannot_be_routed_leaves_the_dead_letter(service: Service) -> None:
    service.dead_letter(1)
    service.inspector.delete_matching(service.retry_queue)  # the retry queue is gone

    code, out, _ = invoke(service, "dlq", "requeue", *where(service), "--json")

    assert code == 1
    summary = json.loads(out)
    assert summary["counts"]["failed"] == 1
    assert "routed" in summary["steps"][0]["detail"] and "to no queue" in summary["steps"][0]["detail"]
    assert service.count(service.dead_letter_queue) == 1


def test_discard_asks_first(service: Service) -> None:
    first, second = service.dead_letter(2)

    code, _, _ = invoke(service, "dlq", "discard", *where(service), input="n\n")
    assert code == 1 and service.count(service.dead_letter_queue) == 2

    code, out, _ = invoke(service, "dlq", "discard", *where(service), "--id", first, "--yes", "--json")
    assert code == 0 and json.loads(out)["counts"]["discarded"] == 1
    assert service.take_ids(service.dead_letter_queue) == [second]


def test_dump_writes_json_lines_and_keeps_the_messages(service: Service, tmp_path: Path) -> None:
    ids = service.dead_letter(3)
    target = tmp_path / "dead.jsonl"

    code, _, err = invoke(service, "dlq", "dump", *where(service), "--output", str(target))
    stdout_code, stdout, _ = invoke(service, "dlq", "dump", *where(service), "--limit", "1")

    assert code == 0 and "dumped 3 dead letters" in err
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(line["message_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert line["headers"]["failure_type"] == "MailServerDown"
        assert line["headers"]["redelivery_count"] == 1
        assert json.loads(line["body"])["data"]["type"] == "user.created"
    assert stdout_code == 0 and len(stdout.splitlines()) == 1
    assert service.count(service.dead_letter_queue) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["-q", "{queue}"], "is not a dead-letter queue"),
    (["-q", "dead_letter.{queue}.gone"], "does not exist"),
    (["--app", "cli.nowhere:subscribers"], "cannot import 'cli.nowhere'"),
    (["--app", "cli.cliapp:SERVICE"], "is not a list of MessageSubscriber"),
])
def test_bad_options_exit_2(service: Service, args: list[str], message: str) -> None:
    service.configure()
    args = [a.format(queue=service.queue) for a in args]
    code, _, err = invoke(service, "dlq", "list", "-o", service.org, "-s", "registration", *args)
    assert code == 2
    assert message in " ".join(err.split())
