"""The operator CLI on a dead-letter queue full of hostile messages (issue 10, item 4).

An attacker with write access publishes straight to the dead-letter exchange: bodies that are
not JSON, nested past any recursion limit, several megabytes, binary, JSON of the wrong shape;
headers of the wrong type, forged counts, huge values, nested tables, markup and terminal escapes.
Every command must work on such a queue, show these messages as undecodable with their size,
move or remove them by id, lose and duplicate nothing, and never print a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import pika
import pytest
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from typer.testing import CliRunner

from cli import cliapp
from cli.conftest import EVENTYARD, LEGACY, Service
from eventyard import Uuid, codec
from eventyard.cli.main import app

pytestmark = pytest.mark.rabbitmq

LONG_TTL_MS = 600_000  # requeued copies wait in the retry queue, where they can be counted
HUGE = 4 * 1024 * 1024
FRAME_MAX = 131_072
ESC = "\x1b"


def fingerprint(body: bytes) -> str:
    """The id the CLI gives a message without a usable message_id."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"down": table}
    return table


@dataclass
class Hostile:
    """One message published straight to the dead-letter exchange."""

    name: str
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    undecodable: bool = True

    @property
    def id(self) -> str:
        message_id = self.properties.get("message_id")
        return message_id if message_id and message_id.isprintable() else fingerprint(self.body)


def good_body() -> bytes:
    """A valid eventyard envelope (a UserCreated)."""
    return codec.encode(cliapp.UserCreated(user_id=Uuid.v4()))


def hostile_messages(*, oversized_headers: bool) -> list[Hostile]:
    """Every hostile kind; ``oversized_headers`` adds one whose requeued copy cannot fit a frame."""
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    messages = [
        Hostile("deep-object", deep),
        Hostile("deep-list", b"[" * 50_000 + b"]" * 50_000, {"message_id": "deep-list-1"}),
        Hostile("not-json", b"hello, I am not JSON"),
        Hostile("binary", bytes(range(256)) * 8 + b"\xff\xfe" + ESC.encode() + b"[2J"),
        Hostile("huge", b'{"data": "' + b"x" * HUGE + b'"}', {"message_id": "huge-1"}),
        Hostile("list", b"[1, 2, 3]"),
        Hostile("number", b"42"),
        Hostile("data-not-object", b'{"data": 5}'),
        Hostile("missing-keys", b'{"data": {"id": "abc"}}'),
        Hostile("typed-garbage", b"\x00\x01\x02 garbage",
                {"type": "user.created", "message_id": "typed-garbage-1"}),
        Hostile("markup", b"[bold red]boom[/] " + ESC.encode() + b"]0;pwned\x07",
                {"message_id": "[/broken] [bold]id"}),
        Hostile("escape-id", b"body of escape-id", {"message_id": f"{ESC}[2Jcleared"}),
        Hostile("forged-headers", good_body(), {"message_id": "forged-1", "headers": {
            "redelivery_count": 2**63 - 1, "requeue_count": 2**63 - 1,
            "failure_attempts": "abc", "failure_type": 12345, "failure_message": "m" * 100_000,
            "failure_stack": b"\xff\xfe stack", "failure_first_at": nested(3),
            "failure_host": f"[red]{ESC}[31mhost", "x-nested": nested(60),
            "x-list": [1, "two", [3, {"four": 4}]], "x-big-int": -(2**63)}}, undecodable=False),
        Hostile("negative-count", b"not json either", {"headers": {
            "redelivery_count": -5, "requeue_count": "abc", "failure_attempts": -5}}),
        Hostile("string-count", good_body(), {"message_id": "string-count-1", "headers": {
            "redelivery_count": "abc", "requeue_count": -5}}, undecodable=False),
    ]
    if oversized_headers:
        messages.append(_oversized(good_body()))
    return messages


def _header_frame_size(body: bytes, properties: spec.Basic.Properties) -> int:
    return len(amqp_frame.marshal(amqp_header.ContentHeader(0, len(body), properties), 1))


def _oversized(body: bytes) -> Hostile:
    """Headers filling a frame to 40 bytes short of frame_max: the copy's own headers overflow."""
    properties: dict[str, Any] = {"message_id": "oversized-1", "headers": {"x-pad": ""}}
    spare = FRAME_MAX - 40 - _header_frame_size(body, spec.Basic.Properties(**properties))
    properties["headers"] = {"x-pad": "p" * spare}
    assert _header_frame_size(body, spec.Basic.Properties(**properties)) == FRAME_MAX - 40
    return Hostile("oversized-headers", body, properties, undecodable=False)


def _publish(service: Service, messages: list[Hostile]) -> None:
    # pika, not aiormq: aiormq gives every message a message_id, an attacker need not.
    connection = pika.BlockingConnection(pika.URLParameters(service.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            channel.basic_publish(
                f"dead_letter.{service.org}.{cliapp.SERVICE}", service.dead_letter_queue,
                message.body, pika.BasicProperties(delivery_mode=2, **message.properties),
                mandatory=True)
    finally:
        connection.close()


@dataclass
class Yard:
    """A dead-letter queue holding two real dead letters and every hostile kind."""

    service: Service
    good_ids: list[str]
    hostile: list[Hostile]
    bodies: Counter[str]  # fingerprint of every body published, with repeats

    def by_name(self, name: str) -> Hostile:
        return next(h for h in self.hostile if h.name == name)

    @property
    def undecodable(self) -> list[Hostile]:
        return [h for h in self.hostile if h.undecodable]

    @property
    def total(self) -> int:
        return len(self.good_ids) + len(self.hostile)


async def _peek_bodies(url: str, queue: str) -> list[bytes]:
    """The bodies ``queue`` holds, left in it (fetched unacked, then the channel closed)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        bodies = []
        for _ in range(int(ok.message_count or 0)):
            message = await channel.basic_get(queue, no_ack=False)
            bodies.append(bytes(message.body))
        await channel.close()
        return bodies
    finally:
        await connection.close()


def fill(service: Service, *, oversized_headers: bool = True) -> Yard:
    """Dead-letter two events with the real consumer, then publish the hostile messages."""
    service.retry_ttl_ms = LONG_TTL_MS
    good_ids = service.dead_letter(2, max_retries=0)
    good_bodies = asyncio.run(_peek_bodies(service.url, service.dead_letter_queue))
    hostile = hostile_messages(oversized_headers=oversized_headers)
    _publish(service, hostile)
    assert service.count(service.dead_letter_queue) == len(good_ids) + len(hostile)
    bodies = Counter(fingerprint(b) for b in [*good_bodies, *(h.body for h in hostile)])
    return Yard(service, good_ids, hostile, bodies)


def everything(yard: Yard) -> tuple[list[tuple[bytes, dict[str, Any]]], list[tuple[bytes, dict[str, Any]]]]:
    """Take the dead-letter and retry queues' messages; assert none was lost or duplicated."""
    service = yard.service
    dead = [(body, headers) for body, headers, _ in service.inspector.take(service.dead_letter_queue)]
    back = [(body, headers) for body, headers, _ in service.inspector.take(service.retry_queue)]
    assert Counter(fingerprint(body) for body, _ in dead + back) == yard.bodies, \
        "a message was lost or duplicated"
    assert service.count(service.queue) == 0
    return dead, back


def invoke(service: Service, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """Run ``eventyard`` in this process against the test broker."""
    runner = CliRunner(env={"RABBITMQ_URL": service.url, "COLUMNS": "200"})
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"eventyard {' '.join(args)} raised {result.exception!r}")
    return result.exit_code, result.stdout, result.stderr


def where(service: Service) -> list[str]:
    return ["-o", service.org, "-s", cliapp.SERVICE, "-q", service.dead_letter_queue]


def body_of(document: dict[str, Any]) -> bytes:
    """The body a ``show --json`` or ``dump`` document carries (text or base64)."""
    if "body" in document:
        return str(document["body"]).encode()
    return base64.b64decode(document["body_base64"])


def no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output and "RecursionError" not in output, output[-2000:]


@pytest.fixture
def yard(service: Service) -> Yard:
    """The test's dead-letter queue, filled; ``service`` deletes it afterwards."""
    return fill(service)


def test_list_counts_undecodable_messages_with_their_sizes(yard: Yard) -> None:
    service = yard.service

    code, out, err = invoke(service, "dlq", "list", *where(service), "--json")
    text_code, text, text_err = invoke(service, "dlq", "list", *where(service))

    assert code == 0 and text_code == 0, err + text_err
    no_traceback(out, err, text, text_err)
    (summary,) = json.loads(out)
    assert summary["count"] == summary["inspected"] == yard.total
    assert summary["undecodable"] == len(yard.undecodable)
    assert sum(g["count"] for g in summary["groups"]) == yard.total
    (good,) = [g for g in summary["groups"] if g["error"] == "MailServerDown"]
    assert good["count"] == len(yard.good_ids)
    hostile_bytes = sum(len(h.body) for h in yard.hostile)
    assert sum(g["bytes"] for g in summary["groups"]) == good["bytes"] + hostile_bytes
    typed = next(g for g in summary["groups"] if g["type"] == "user.created" and g["undecodable"])
    assert typed["count"] == 1 and typed["bytes"] == len(yard.by_name("typed-garbage").body)
    assert f"{yard.total} dead letters in 1 queue; {len(yard.undecodable)} undecodable" in text
    assert "(undecodable)" in text and "user.created (undecodable)" in text
    untyped = next(g for g in summary["groups"] if g["type"] == "?" and g["undecodable"])
    assert untyped["bytes"] == sum(len(h.body) for h in yard.undecodable if h.name != "typed-garbage")
    assert f"{untyped['bytes']:,}" in text
    assert service.count(service.dead_letter_queue) == yard.total


def test_show_marks_each_undecodable_message_with_size_and_safe_preview(yard: Yard) -> None:
    service = yard.service

    code, out, err = invoke(service, "dlq", "show", *where(service), "--limit", "100")
    json_code, listed, json_err = invoke(service, "dlq", "show", *where(service), "--json",
                                         "--limit", "100")

    assert code == 0 and json_code == 0, err + json_err
    no_traceback(out, err, json_err)
    assert ESC not in out and "\x07" not in out, "a terminal escape from a message reached the screen"
    text = " ".join(out.split())
    assert f"{yard.total} dead letters shown, {len(yard.undecodable)} undecodable" in text
    for hostile in yard.undecodable:
        assert f"{hostile.id} (undecodable)" in out, hostile.name
        assert f"size {len(hostile.body):,} bytes" in text, hostile.name
    assert "[/broken] [bold]id (undecodable)" in out  # markup printed as it is
    assert "[bold red]boom[/] \\x1b]0;pwned\\x07" in out  # the preview, escaped
    assert "nested too deeply to decode" in text or "recursion" in text
    assert "forged-1" in out and "12345" in text  # a forged failure_type read as text

    letters = {letter["id"]: letter for letter in json.loads(listed)}
    assert len(letters) == yard.total  # every id distinct
    for hostile in yard.hostile:
        letter = letters[hostile.id]
        assert letter["undecodable"] is hostile.undecodable, hostile.name
        assert letter["size"] == len(hostile.body) and letter["fingerprint"] == fingerprint(hostile.body)
        assert body_of(letter) == hostile.body, hostile.name
    forged = letters["forged-1"]
    assert forged["failure"]["attempts"] is None and forged["failure"]["type"] == "12345"
    assert len(forged["failure"]["message"]) < 9_000  # 100,000 characters, cut for display
    assert forged["headers"]["x-big-int"] == -(2**63)
    assert letters[fingerprint(yard.by_name("escape-id").body)]["message_id"] == f"{ESC}[2Jcleared"
    assert sorted(i for i in letters if i in yard.good_ids) == sorted(yard.good_ids)
    assert service.count(service.dead_letter_queue) == yard.total


def test_show_body_of_a_huge_message_is_cut(yard: Yard) -> None:
    service = yard.service

    code, out, err = invoke(service, "dlq", "show", *where(service), "--id", "huge-1", "--body")

    assert code == 0, err
    no_traceback(out, err)
    assert f"the start of {len(yard.by_name('huge').body):,} bytes" in " ".join(out.split())
    assert len(out) < 40_000


def test_dump_writes_every_message_whole(yard: Yard, tmp_path: Path) -> None:
    service = yard.service
    target = tmp_path / "dead.jsonl"

    code, _, err = invoke(service, "dlq", "dump", *where(service), "--output", str(target))

    assert code == 0, err
    no_traceback(err)
    assert f"dumped {yard.total} dead letters" in err
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    bodies = Counter(fingerprint(body_of(line)) for line in lines)
    assert bodies == yard.bodies
    assert sum(1 for line in lines if line["undecodable"]) == len(yard.undecodable)
    assert service.count(service.dead_letter_queue) == yard.total


def test_requeue_moves_every_message_it_can_and_warns_about_the_undecodable(yard: Yard) -> None:
    service = yard.service

    code, out, err = invoke(service, "dlq", "requeue", *where(service), "--json")

    assert code == 1, err  # the oversized one could not be copied
    no_traceback(out, err)
    report = json.loads(out)
    moved = yard.total - 1
    assert report["counts"] == {"requeued": moved, "would_requeue": 0, "skipped": 0, "failed": 1,
                                "discarded": 0}
    (failed,) = [s for s in report["steps"] if s["outcome"] == "failed"]
    assert failed["id"] == "oversized-1" and "frame_max" in failed["detail"]
    flat = " ".join(err.split())
    for hostile in yard.undecodable:
        warning = f"requeued undecodable message {hostile.id} ({len(hostile.body):,} bytes)"
        assert warning in flat, hostile.name
    assert f"{len(yard.undecodable)} undecodable messages went back to the subscriber" in flat
    assert "failed oversized-1 in" in flat and "(left in its queue)" in flat

    dead, back = everything(yard)
    assert [body for body, _ in dead] == [yard.by_name("oversized-headers").body]
    assert len(back) == moved
    for _, headers in back:
        assert headers["redelivery_count"] == 0
        assert not any(k.startswith("failure_") and k != "failure_routing_key" for k in headers)
        assert headers["requeued_from"] == service.dead_letter_queue
    forged = next(h for b, h in back if b == yard.by_name("forged-headers").body)
    assert forged["requeue_count"] == 1_000_001  # 2**63-1 clamped, so the count stays encodable
    assert forged["previous_failure"]["attempts"] == "abc" and forged["previous_failure"]["type"] == "12345"
    assert len(forged["previous_failure"]["message"]) < 1_100
    assert forged["x-big-int"] == -(2**63) and forged["x-list"] == [1, "two", [3, {"four": 4}]]
    negative = next(h for b, h in back if b == yard.by_name("negative-count").body)
    assert negative["requeue_count"] == 1 and negative["previous_failure"]["attempts"] == -5


def test_requeue_and_discard_by_id_report_ids_not_found(yard: Yard) -> None:
    service = yard.service
    deep = fingerprint(yard.by_name("deep-object").body)
    binary = fingerprint(yard.by_name("binary").body)

    code, out, err = invoke(service, "dlq", "requeue", *where(service), "--id", deep, "--id", "nowhere-1",
                            "--json")
    assert code == 1
    no_traceback(out, err)
    report = json.loads(out)
    assert report["counts"]["requeued"] == 1 and report["not_found"] == ["nowhere-1"]
    assert "not found: nowhere-1" in " ".join(err.split())
    assert f"requeued undecodable message {deep}" in " ".join(err.split())

    code, out, err = invoke(service, "dlq", "discard", *where(service), "--id", binary, "--yes")
    assert code == 0, err
    no_traceback(out, err)
    code, out, err = invoke(service, "dlq", "discard", *where(service), "--id", binary, "--yes")
    assert code == 1 and f"not found: {binary}" in " ".join(err.split())

    code, out, err = invoke(service, "dlq", "discard", *where(service), "--undecodable", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["counts"]["discarded"] == len(yard.undecodable) - 2

    yard.bodies -= Counter(fingerprint(h.body) for h in yard.undecodable if h.name != "deep-object")
    dead, back = everything(yard)
    assert [body for body, _ in back] == [yard.by_name("deep-object").body]
    assert len(dead) == yard.total - len(yard.undecodable)


def test_requeue_in_a_real_process(yard: Yard) -> None:
    service = yard.service

    result = service.run(EVENTYARD, "dlq", "requeue", *where(service))
    listed = service.run(EVENTYARD, "dlq", "list", *where(service))

    assert result.returncode == 1 and listed.returncode == 0, result.stderr + listed.stderr
    no_traceback(result.stdout, result.stderr, listed.stdout, listed.stderr)
    flat = " ".join(result.stderr.split())
    assert "undecodable messages went back to the subscriber" in flat
    assert "failed oversized-1" in flat and "frame_max" in flat
    assert "1 dead letter in 1 queue" in listed.stdout
    dead, back = everything(yard)
    assert len(dead) == 1 and len(back) == yard.total - 1


@pytest.mark.parametrize("dry_run", [False, True], ids=["requeue", "dry-run"])
def test_seed_command_requeues_hostile_messages_with_warnings(service: Service, dry_run: bool) -> None:
    yard = fill(service, oversized_headers=False)

    result = service.run(LEGACY, "--requeue", "-o", service.org, "-s", cliapp.SERVICE,
                         "-cq", service.dead_letter_queue, *(["--dry-run"] if dry_run else []))

    assert result.returncode == 0, result.stderr
    no_traceback(result.stdout, result.stderr)
    verb = "would requeue" if dry_run else "requeued"
    assert (f"{verb} {yard.total} messages from 1 queue ({len(yard.undecodable)} undecodable: "
            "see the warnings)") in result.stdout
    for hostile in yard.undecodable:
        assert f"{verb} {hostile.id} " in result.stdout, hostile.name
        assert f"eventyard-rabbitmq: warning: {hostile.id} from {service.dead_letter_queue} is undecodable" \
            in result.stderr, hostile.name
        assert f"{len(hostile.body):,} bytes" in result.stderr
    assert ESC not in result.stdout + result.stderr
    dead, back = everything(yard)
    assert (len(dead), len(back)) == ((yard.total, 0) if dry_run else (0, yard.total))
