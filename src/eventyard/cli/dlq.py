"""``eventyard dlq``: list, show, requeue, discard and dump dead letters."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TextIO

import typer
from aiormq.abc import AbstractConnection
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventyard import naming
from eventyard.cli.common import (
    JsonFlag,
    NoStore,
    Organization,
    Service,
    StoreQueue,
    Url,
    app_topology,
    err,
    fail,
    out,
    plural,
    print_json,
    run,
    settings,
    topology_options,
)
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import DeadLetter, Report, Selection, Step
from eventyard.rabbitmq.inspection import connect, queue_state
from eventyard.rabbitmq.settings import ConnectionSettings

app = typer.Typer(help="Dead letters: list, show, requeue, discard, dump.", no_args_is_help=True)

AppOption = Annotated[str | None, typer.Option(
    "--app", help="module:attribute of the application's subscribers; its dead-letter queues are used.")]
QueueOption = Annotated[list[str] | None, typer.Option(
    "--queue", "-q", help="A dead-letter queue (repeat, or separate with commas).")]
IdOption = Annotated[list[str] | None, typer.Option("--id", help="Only this message id (repeatable).")]
TypeOption = Annotated[list[str] | None, typer.Option(
    "--type", help="Only this message type, e.g. user.created (repeatable).")]


@dataclass(frozen=True, slots=True)
class Target:
    """The dead-letter queues a command works on."""

    org: str
    svc: str
    queues: list[str]
    explicit: bool
    store_queue: str
    settings: ConnectionSettings


def _target(org: str, svc: str, app_spec: str | None, queues: list[str] | None, store_queue: str,
            no_store: bool, url: str | None) -> Target:
    names = [q.strip() for item in queues or [] for q in item.split(",") if q.strip()]
    if names:
        for name in names:
            if not naming.is_dead_letter_queue(name):
                fail(f"{name!r} is not a dead-letter queue: only dead_letter.* queues are accepted")
            try:
                dead_letters.route_for(org, svc, name, store_queue)
            except ValueError as error:
                fail(str(error))
        return Target(org, svc, list(dict.fromkeys(names)), True, store_queue, settings(url))
    if app_spec is None:
        fail("name the dead-letter queues with --queue, or give --app module:attribute so they can be "
             "derived (AMQP cannot list queues)")
    options = topology_options(5000, 5, store_queue, no_store)
    topology = app_topology(app_spec, org, svc, options)
    return Target(org, svc, dead_letters.dead_letter_queues(topology), False, store_queue, settings(url))


async def _present(connection: AbstractConnection, target: Target) -> list[str]:
    """The target's queues that exist; a missing named queue is an error, a derived one a note."""
    present = []
    for queue in target.queues:
        if (await queue_state(connection, queue)).exists:
            present.append(queue)
        elif target.explicit:
            raise LookupError(f"queue {queue!r} does not exist on {target.settings.describe()}")
        else:
            err.print(f"note: {queue} does not exist (run `eventyard configure`)")
    return present


def _selection(ids: list[str] | None, types: list[str] | None) -> Selection:
    return Selection.of(ids or (), types or ())


@app.command("list")
def list_queues(organization: Organization, service: Service, app_spec: AppOption = None,
                queue: QueueOption = None, store_queue: StoreQueue = naming.STORE_QUEUE,
                no_store: NoStore = False, limit: Annotated[int, typer.Option(
                    min=1, help="Inspect at most this many messages per queue.")] = 10_000,
                json_output: JsonFlag = False, url: Url = None) -> None:
    """Each dead-letter queue with its count, by message type and error."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)

    async def summarize() -> list[dead_letters.QueueSummary]:
        async with connect(target.settings) as connection:
            if target.explicit:
                await _present(connection, target)
            return await dead_letters.summarize(connection, target.queues, limit=limit)

    summaries = run(summarize())
    if json_output:
        print_json([{"queue": s.queue, "exists": s.exists, "count": s.count, "inspected": s.inspected,
                     "groups": [{"type": t, "error": e, "count": n} for t, e, n in s.groups]}
                    for s in summaries])
        return
    table = Table(title=f"Dead letters of {organization}.{service}")
    for column in ("queue", "messages", "message type", "error", "count"):
        table.add_column(column, justify="right" if column in ("messages", "count") else "left")
    for summary in summaries:
        if not summary.exists:
            table.add_row(summary.queue, "missing", "", "", "")
            continue
        table.add_row(summary.queue, str(summary.count), "", "", "")
        for message_type, error, count in summary.groups:
            table.add_row("", "", message_type, error, str(count))
    out.print(table)
    total = sum(s.count for s in summaries)
    out.print(f"{plural(total, 'dead letter')} in {plural(len(summaries), 'queue')}")


def _render_letter(letter: DeadLetter, stack: bool, body: bool) -> None:
    failure = letter.failure
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [("message id", letter.message_id), ("type", letter.type), ("dead-letter queue", letter.queue),
            ("exception", failure.type), ("message", failure.message),
            ("attempts", None if failure.attempts is None else str(failure.attempts)),
            ("first failure", failure.first_at), ("last failure", failure.last_at),
            ("original queue", failure.queue), ("routing key", failure.routing_key),
            ("host", failure.host)]
    if stack:
        rows.append(("stack", failure.stack))
    if body:
        rows.append(("body", letter.body.decode(errors="replace")))
    for name, value in rows:
        table.add_row(name, "-" if value in (None, "") else str(value))
    out.rule(letter.message_id or "(no message id)")
    out.print(table)


@app.command()
def show(organization: Organization, service: Service, app_spec: AppOption = None,
         queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
         limit: Annotated[int, typer.Option(min=1, help="At most this many per queue.")] = 20,
         stack: Annotated[bool, typer.Option("--stack", help="Include the stack trace.")] = False,
         body: Annotated[bool, typer.Option("--body", help="Include the body.")] = False,
         store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
         json_output: JsonFlag = False, url: Url = None) -> None:
    """Dead letters with their failure headers; they stay in their queue (order may change)."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type)

    async def peek() -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        async with connect(target.settings) as connection:
            for name in await _present(connection, target):
                letters += await dead_letters.peek(connection, name, limit=limit, select=select)
        return letters

    letters = run(peek())
    if json_output:
        print_json([letter.to_json() for letter in letters])
        return
    for letter in letters:
        _render_letter(letter, stack, body)
    out.print(plural(len(letters), "dead letter") + " shown")


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def _render_report(report: Report, verb: str) -> None:
    by_queue: Counter[tuple[str, str, str]] = Counter(
        (s.queue, s.type or "?", s.outcome) for s in report.steps)
    table = Table(title=f"{verb}{' (dry run: nothing changed)' if report.dry_run else ''}")
    for column in ("queue", "message type", "outcome", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for (queue, message_type, outcome), count in sorted(by_queue.items()):
        table.add_row(queue, message_type, outcome, str(count))
    out.print(table)
    for step in report.failed:
        err.print(f"[red]failed[/] {step.message_id} in {step.queue}: {step.detail} (left in its queue)")


@app.command()
def requeue(organization: Organization, service: Service, app_spec: AppOption = None,
            queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would move; change nothing.")]
            = False,
            wait: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait between messages.")]
            = 0.0,
            delay_ms: Annotated[int | None, typer.Option(
                "--delay-ms", min=0, help="Time in the retry queue before delivery (capped by its TTL).")]
            = None,
            store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
            json_output: JsonFlag = False, url: Url = None) -> None:
    """Send dead letters back to their subscriber through its retry queue, retry count reset."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type)

    async def move() -> Report:
        async with connect(target.settings) as connection:
            present = await _present(connection, target)
            total = sum([(await queue_state(connection, q)).messages for q in present])
            with _progress_bar() as progress:
                task = progress.add_task("checking" if dry_run else "requeueing", total=total)

                def advance(step: Step) -> None:
                    progress.advance(task)

                return await dead_letters.requeue(
                    connection, organization, service, present, select=select, dry_run=dry_run,
                    wait_seconds=wait, delay_ms=delay_ms, store_queue=store_queue, on_step=advance)

    report = run(move())
    if json_output:
        print_json(report.to_json())
    else:
        _render_report(report, "Requeue")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def discard(organization: Organization, service: Service, app_spec: AppOption = None,
            queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
            yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
            store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
            json_output: JsonFlag = False, url: Url = None) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type)

    async def count() -> tuple[list[str], int]:
        async with connect(target.settings) as connection:
            present = await _present(connection, target)
            return present, sum([(await queue_state(connection, q)).messages for q in present])

    present, total = run(count())
    if not yes:
        which = "selected dead letters among " if select != dead_letters.ALL else ""
        typer.confirm(f"Discard the {which}{plural(total, 'message')} of {', '.join(present)}? "
                      "This cannot be undone.", abort=True, err=True)

    async def remove() -> Report:
        async with connect(target.settings) as connection:
            return await dead_letters.discard(connection, present, select=select)

    report = run(remove())
    if json_output:
        print_json(report.to_json())
    else:
        _render_report(report, "Discard")


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8") as stream:
        yield stream


@app.command()
def dump(organization: Organization, service: Service, app_spec: AppOption = None,
         queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
         output: Annotated[Path | None, typer.Option("--output", help="Write here instead of stdout.")]
         = None,
         limit: Annotated[int | None, typer.Option(min=1, help="At most this many messages.")] = None,
         store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
         url: Url = None) -> None:
    """Write dead letters as JSON lines (headers and body), leaving them in their queue."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type)

    async def write(stream: TextIO) -> int:
        async with connect(target.settings) as connection:
            present = await _present(connection, target)
            return await dead_letters.dump(connection, present, stream.write, select=select, limit=limit)

    with _output(output) as stream:
        written = run(write(stream))
    err.print(f"dumped {plural(written, 'dead letter')}" + (f" to {output}" if output else ""))
