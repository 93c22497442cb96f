"""``eventyard dlq``: list, show, requeue, discard and dump dead letters.

The commands parse their options, call the library and render: which queues and letters in
``dlq_targets``, the terminal output in ``dlq_render``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import typer
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
    err,
    out,
    plural,
    print_json,
    run,
)
from eventyard.cli.dlq_render import (
    not_found,
    progress_bar,
    render_letter,
    render_report,
    type_label,
    warn_failed,
    warn_undecodable,
)
from eventyard.cli.dlq_targets import present_queues, selection, target_of
from eventyard.dead_letter_reports import QueueSummary, Report, Step
from eventyard.dead_letters import ALL, DeadLetter
from eventyard.rabbitmq.dead_letter_box import open_dead_letter_box

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


@app.command("list")
def list_queues(organization: Organization, service: Service, app_spec: AppOption = None,
                queue: QueueOption = None, store_queue: StoreQueue = naming.STORE_QUEUE,
                no_store: NoStore = False, limit: Annotated[int, typer.Option(
                    min=1, help="Inspect at most this many messages per queue.")] = 10_000,
                json_output: JsonFlag = False, url: Url = None) -> None:
    """Each dead-letter queue with its count, by message type and error."""
    target = target_of(organization, service, app_spec, queue, store_queue, no_store, url)

    async def summarize() -> list[QueueSummary]:
        async with open_dead_letter_box(target.settings) as box:
            if target.explicit:
                await present_queues(box, target)
            return await box.summarize(target.queues, limit=limit)

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
            table.add_row("", "", Text(type_label(group.type, group.undecodable)), Text(group.error),
                          str(group.count), f"{group.bytes:,}")
    out.print(table)
    total = sum(s.count for s in summaries)
    undecodable = sum(s.undecodable for s in summaries)
    out.print(f"{plural(total, 'dead letter')} in {plural(len(summaries), 'queue')}"
              + (f"; {undecodable} undecodable (`eventyard dlq show --undecodable` shows them)"
                 if undecodable else ""))


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
    target = target_of(organization, service, app_spec, queue, store_queue, no_store, url)
    select = selection(message_id, message_type, undecodable)
    seen: set[str] = set()
    complete = True  # every queue read to its end: an id not seen is not there

    async def peek() -> tuple[list[str], list[DeadLetter]]:
        nonlocal complete
        letters: list[DeadLetter] = []
        async with open_dead_letter_box(target.settings) as box:
            present = list(await present_queues(box, target))
            for name in present:
                found = await box.peek(name, limit=limit, select=select, seen=seen)
                complete = complete and len(found) < limit
                letters += found
        return present, letters

    present, letters = run(peek())
    if json_output:
        print_json([letter.to_json() for letter in letters])
    else:
        for letter in letters:
            render_letter(letter, stack, body)
        undecodable_count = sum(1 for letter in letters if letter.undecodable)
        out.print(plural(len(letters), "dead letter") + " shown"
                  + (f", {undecodable_count} undecodable" if undecodable_count else ""))
    missing = sorted(select.message_ids - seen) if complete else []
    not_found(missing, present)
    if missing:
        raise typer.Exit(1)


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
    target = target_of(organization, service, app_spec, queue, store_queue, no_store, url)
    select = selection(message_id, message_type, undecodable)
    present: list[str] = []

    async def move() -> Report:
        async with open_dead_letter_box(target.settings) as box:
            counts = await present_queues(box, target)
            present[:] = counts
            total = sum(counts.values())
            with progress_bar() as progress:
                task = progress.add_task("checking" if dry_run else "requeueing", total=total)

                def advance(step: Step) -> None:
                    progress.advance(task)

                return await box.requeue(
                    organization, service, present, select=select, dry_run=dry_run,
                    wait_seconds=wait, delay_ms=delay_ms, store_queue=store_queue, on_step=advance)

    report = run(move())
    if json_output:
        print_json(report.to_json())
    else:
        render_report(report, "Requeue")
    warn_failed(report)
    warn_undecodable(report)
    not_found(report.not_found, present)
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
    target = target_of(organization, service, app_spec, queue, store_queue, no_store, url)
    select = selection(message_id, message_type, undecodable)

    async def count() -> tuple[list[str], int]:
        async with open_dead_letter_box(target.settings) as box:
            counts = await present_queues(box, target)
            return list(counts), sum(counts.values())

    present, total = run(count())
    if not yes:
        which = "selected dead letters among " if select != ALL else ""
        typer.confirm(f"Discard the {which}{plural(total, 'message')} of {', '.join(present)}? "
                      "This cannot be undone.", abort=True, err=True)

    async def remove() -> Report:
        async with open_dead_letter_box(target.settings) as box:
            return await box.discard(present, select=select)

    report = run(remove())
    if json_output:
        print_json(report.to_json())
    else:
        render_report(report, "Discard")
    not_found(report.not_found, present)
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
    target = target_of(organization, service, app_spec, queue, store_queue, no_store, url)
    select = selection(message_id, message_type, undecodable)
    seen: set[str] = set()
    present: list[str] = []

    async def write(stream: TextIO) -> int:
        async with open_dead_letter_box(target.settings) as box:
            present[:] = await present_queues(box, target)
            return await box.dump(present, stream.write, select=select, limit=limit, seen=seen)

    with _output(output) as stream:
        written = run(write(stream))
    err.print(Text(f"dumped {plural(written, 'dead letter')}" + (f" to {output}" if output else "")))
    missing = sorted(select.message_ids - seen) if limit is None or written < limit else []
    not_found(missing, present)
    if missing:
        raise typer.Exit(1)
