"""``eventyard dlq``: list, show, requeue, discard and dump dead letters."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TextIO

import typer
from aiormq.abc import AbstractConnection
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

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
from eventyard.errors import ConfigurationError, ManagementApiError, QueueNotFoundError
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import DeadLetter, Report, Selection, Step, preview, printable
from eventyard.rabbitmq.inspection import connect, queue_state
from eventyard.rabbitmq.management import discover_dead_letter_queues
from eventyard.rabbitmq.settings import ConnectionSettings

app = typer.Typer(help="Dead letters: list, show, requeue, discard, dump.", no_args_is_help=True)

AppOption = Annotated[str | None, typer.Option(
    "--app", help="module:attribute of the application's subscribers; its dead-letter queues are used. "
                  "Without --app or --queue, the management API lists the service's dead-letter queues.")]
QueueOption = Annotated[list[str] | None, typer.Option(
    "--queue", "-q", help="A dead-letter queue (repeat, or separate with commas).")]
IdOption = Annotated[list[str] | None, typer.Option(
    "--id", help="Only this message: its id (message_id, or sha256:… fingerprint of the body when it "
                 "has none) (repeatable).")]
TypeOption = Annotated[list[str] | None, typer.Option(
    "--type", help="Only this message type, e.g. user.created (repeatable).")]
UndecodableFlag = Annotated[bool, typer.Option(
    "--undecodable", help="Only messages whose body eventyard cannot decode.")]

BODY_SHOWN = 16_384  # characters of a body `show --body` prints; `dump` writes it all
WARNINGS_SHOWN = 20  # undecodable messages named one by one after a requeue


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
            except ConfigurationError as error:
                fail(str(error))
        return Target(org, svc, list(dict.fromkeys(names)), True, store_queue, settings(url))
    if app_spec is None:
        return _discovered(org, svc, store_queue, settings(url))
    options = topology_options(5000, 5, store_queue, no_store)
    topology = app_topology(app_spec, org, svc, options)
    return Target(org, svc, dead_letters.dead_letter_queues(topology), False, store_queue, settings(url))


def _discovered(org: str, svc: str, store_queue: str, connection: ConnectionSettings) -> Target:
    """The service's dead-letter queues as the management API lists them (AMQP cannot)."""
    try:
        found = discover_dead_letter_queues(connection, org, svc)
    except ManagementApiError as error:
        fail(f"cannot list the dead-letter queues: {error}. Without the management API, name them "
             "with --queue, or give --app module:attribute so they can be derived from the "
             "application")
    mine = []
    for name in found:
        try:
            dead_letters.route_for(org, svc, name, store_queue)
        except ConfigurationError:
            continue  # bound to the service's exchange but not requeueable by it: not ours to touch
        mine.append(name)
    if not mine:
        err.print(Text(f"note: the management API lists no dead-letter queue of {org}.{svc} on "
                       f"{connection.describe()}"), soft_wrap=True)
    return Target(org, svc, mine, False, store_queue, connection)


async def _present(connection: AbstractConnection, target: Target) -> list[str]:
    """The target's queues that exist; a missing named queue is an error, a derived one a note."""
    present = []
    for queue in target.queues:
        if (await queue_state(connection, queue)).exists:
            present.append(queue)
        elif target.explicit:
            raise QueueNotFoundError(f"queue {queue!r} does not exist on {target.settings.describe()}")
        else:
            err.print(f"note: {queue} does not exist (run `eventyard configure`)")
    return present


def _selection(ids: list[str] | None, types: list[str] | None, undecodable: bool = False) -> Selection:
    return Selection.of(ids or (), types or (), undecodable)


def size(count: int) -> str:
    """``5,242,880 bytes``."""
    return f"{count:,} byte{'' if count == 1 else 's'}"


def _type_label(message_type: str | None, undecodable: bool) -> str:
    if not undecodable:
        return message_type or "?"
    return f"{message_type} (undecodable)" if message_type else "(undecodable)"


def _not_found(ids: Sequence[str], queues: Sequence[str]) -> None:
    """Say which asked-for ids no queue holds (the command then exits 1)."""
    if ids:
        err.print(Text(f"Error: not found: {', '.join(printable(i) for i in ids)} "
                       f"(in {', '.join(queues) or 'no queue'})", style="red"), soft_wrap=True)


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
                     "undecodable": s.undecodable,
                     "groups": [{"type": g.type, "error": g.error, "undecodable": g.undecodable,
                                 "count": g.count, "bytes": g.bytes} for g in s.groups]}
                    for s in summaries])
        return
    table = Table(title=Text(f"Dead letters of {organization}.{service}"))
    for column in ("queue", "messages", "message type", "error", "count", "bytes"):
        table.add_column(column, justify="right" if column in ("messages", "count", "bytes") else "left",
                         overflow="fold")
    for summary in summaries:
        if not summary.exists:
            table.add_row(Text(summary.queue), "missing", "", "", "", "")
            continue
        table.add_row(Text(summary.queue), str(summary.count), "", "", "", "")
        for group in summary.groups:
            table.add_row("", "", Text(_type_label(group.type, group.undecodable)), Text(group.error),
                          str(group.count), f"{group.bytes:,}")
    out.print(table)
    total = sum(s.count for s in summaries)
    undecodable = sum(s.undecodable for s in summaries)
    out.print(f"{plural(total, 'dead letter')} in {plural(len(summaries), 'queue')}"
              + (f"; {undecodable} undecodable (`eventyard dlq show --undecodable` shows them)"
                 if undecodable else ""))


def _body_text(letter: DeadLetter) -> str:
    text = letter.body[:BODY_SHOWN].decode(errors="backslashreplace")[:BODY_SHOWN]
    text = printable(text, keep="\n\t")
    if letter.size > len(text.encode()) or letter.size > BODY_SHOWN:
        text += f"\n… (the start of {size(letter.size)}; `eventyard dlq dump` writes it all)"
    return text


def _render_letter(letter: DeadLetter, stack: bool, body: bool) -> None:
    failure = letter.failure
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str | None]] = [
        ("id", letter.id),
        ("message id", printable(letter.message_id) if letter.message_id is not None else None),
        ("fingerprint", letter.fingerprint), ("type", letter.type), ("size", size(letter.size))]
    if letter.undecodable:
        rows.append(("undecodable", letter.problem))
        if not body:
            rows.append(("preview", preview(letter.body)))
    rows += [("correlation id", letter.correlation_id), ("causation id", letter.causation_id),
             ("dead-letter queue", letter.queue),
             ("exception", failure.type), ("message", failure.message),
             ("attempts", None if failure.attempts is None else str(failure.attempts)),
             ("first failure", failure.first_at), ("last failure", failure.last_at),
             ("original queue", failure.queue), ("routing key", failure.routing_key),
             ("host", failure.host)]
    if stack:
        rows.append(("stack", failure.stack))
    if body:
        rows.append(("body", _body_text(letter)))
    for name, value in rows:
        # Header text is the sender's: escaped, and never read as rich markup.
        shown = "-" if value in (None, "") else printable(str(value), keep="\n\t")
        table.add_row(name, Text(shown))
    out.rule(Text(letter.id + (" (undecodable)" if letter.undecodable else "")))
    out.print(table)


@app.command()
def show(organization: Organization, service: Service, app_spec: AppOption = None,
         queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
         limit: Annotated[int, typer.Option(min=1, help="At most this many per queue.")] = 20,
         stack: Annotated[bool, typer.Option("--stack", help="Include the stack trace.")] = False,
         body: Annotated[bool, typer.Option("--body", help="Include the body (its first 16,384 "
                                                            "characters).")] = False,
         undecodable: UndecodableFlag = False,
         store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
         json_output: JsonFlag = False, url: Url = None) -> None:
    """Dead letters with their failure headers; they stay in their queue (order may change)."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type, undecodable)
    seen: set[str] = set()
    complete = True  # every queue read to its end: an id not seen is not there

    async def peek() -> tuple[list[str], list[DeadLetter]]:
        nonlocal complete
        letters: list[DeadLetter] = []
        async with connect(target.settings) as connection:
            present = await _present(connection, target)
            for name in present:
                found = await dead_letters.peek(connection, name, limit=limit, select=select, seen=seen)
                complete = complete and len(found) < limit
                letters += found
        return present, letters

    present, letters = run(peek())
    if json_output:
        print_json([letter.to_json() for letter in letters])
    else:
        for letter in letters:
            _render_letter(letter, stack, body)
        undecodable_count = sum(1 for letter in letters if letter.undecodable)
        out.print(plural(len(letters), "dead letter") + " shown"
                  + (f", {undecodable_count} undecodable" if undecodable_count else ""))
    missing = sorted(select.message_ids - seen) if complete else []
    _not_found(missing, present)
    if missing:
        raise typer.Exit(1)


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def _render_report(report: Report, verb: str) -> None:
    by_queue: Counter[tuple[str, str, str]] = Counter(
        (s.queue, _type_label(s.type, s.undecodable), s.outcome) for s in report.steps)
    table = Table(title=f"{verb}{' (dry run: nothing changed)' if report.dry_run else ''}")
    for column in ("queue", "message type", "outcome", "count"):
        table.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
    for (queue, message_type, outcome), count in sorted(by_queue.items()):
        table.add_row(Text(queue), Text(message_type), outcome, str(count))
    out.print(table)


def _warn_failed(report: Report) -> None:
    for step in report.failed:
        err.print(Text.assemble(("failed", "red"), f" {step.id} in {step.queue}: {step.detail} "
                                "(left in its queue)"), soft_wrap=True)


def _warn_undecodable(report: Report) -> None:
    """Name each undecodable message requeued: its subscriber cannot decode it either."""
    steps = report.undecodable
    verb = "would requeue" if report.dry_run else "requeued"
    for step in steps[:WARNINGS_SHOWN]:
        err.print(Text(f"warning: {verb} undecodable message {step.id} ({size(step.size)}) from "
                       f"{step.queue}: {step.problem}", style="yellow"), soft_wrap=True)
    if len(steps) > WARNINGS_SHOWN:
        err.print(Text(f"warning: and {len(steps) - WARNINGS_SHOWN} more undecodable messages "
                       "(--json lists them)", style="yellow"))
    if steps:
        went = "would go" if report.dry_run else "went"
        it = "it" if len(steps) == 1 else "them"
        err.print(Text(f"warning: {plural(len(steps), 'undecodable message')} {went} back to the "
                       f"subscriber, which cannot decode {it} either and will dead-letter {it} again; "
                       "`eventyard dlq discard --undecodable` removes such messages", style="yellow"),
                  soft_wrap=True)


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
            undecodable: UndecodableFlag = False,
            store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
            json_output: JsonFlag = False, url: Url = None) -> None:
    """Send dead letters back to their subscriber through its retry queue, retry count reset."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type, undecodable)
    present: list[str] = []

    async def move() -> Report:
        async with connect(target.settings) as connection:
            present[:] = await _present(connection, target)
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
    _warn_failed(report)
    _warn_undecodable(report)
    _not_found(report.not_found, present)
    if report.failed or report.not_found:
        raise typer.Exit(1)


@app.command()
def discard(organization: Organization, service: Service, app_spec: AppOption = None,
            queue: QueueOption = None, message_id: IdOption = None, message_type: TypeOption = None,
            undecodable: UndecodableFlag = False,
            yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
            store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
            json_output: JsonFlag = False, url: Url = None) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type, undecodable)

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
    _not_found(report.not_found, present)
    if report.not_found:
        raise typer.Exit(1)


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
         undecodable: UndecodableFlag = False,
         store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
         url: Url = None) -> None:
    """Write dead letters as JSON lines (headers and body), leaving them in their queue."""
    target = _target(organization, service, app_spec, queue, store_queue, no_store, url)
    select = _selection(message_id, message_type, undecodable)
    seen: set[str] = set()
    present: list[str] = []

    async def write(stream: TextIO) -> int:
        async with connect(target.settings) as connection:
            present[:] = await _present(connection, target)
            return await dead_letters.dump(connection, present, stream.write, select=select,
                                           limit=limit, seen=seen)

    with _output(output) as stream:
        written = run(write(stream))
    err.print(Text(f"dumped {plural(written, 'dead letter')}" + (f" to {output}" if output else "")))
    missing = sorted(select.message_ids - seen) if limit is None or written < limit else []
    _not_found(missing, present)
    if missing:
        raise typer.Exit(1)
