"""How ``eventyard dlq`` shows dead letters, reports and warnings on the terminal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from eventyard.cli.common import err, out, plural
from eventyard.rabbitmq.dead_letters import DeadLetter, Report, preview, printable

BODY_SHOWN = 16_384  # characters of a body `show --body` prints; `dump` writes it all
WARNINGS_SHOWN = 20  # undecodable messages named one by one after a requeue


def size(count: int) -> str:
    """``5,242,880 bytes``."""
    return f"{count:,} byte{'' if count == 1 else 's'}"


def type_label(message_type: str | None, undecodable: bool) -> str:
    """A message type as a table shows it, marked when the body cannot be decoded."""
    if not undecodable:
        return message_type or "?"
    return f"{message_type} (undecodable)" if message_type else "(undecodable)"


def not_found(ids: Sequence[str], queues: Sequence[str]) -> None:
    """Say which asked-for ids no queue holds (the command then exits 1)."""
    if ids:
        err.print(Text(f"Error: not found: {', '.join(printable(i) for i in ids)} "
                       f"(in {', '.join(queues) or 'no queue'})", style="red"), soft_wrap=True)


def body_text(letter: DeadLetter) -> str:
    """The start of ``letter``'s body, printable, saying when it is cut."""
    text = letter.body[:BODY_SHOWN].decode(errors="backslashreplace")[:BODY_SHOWN]
    text = printable(text, keep="\n\t")
    if letter.size > len(text.encode()) or letter.size > BODY_SHOWN:
        text += f"\n… (the start of {size(letter.size)}; `eventyard dlq dump` writes it all)"
    return text


def render_letter(letter: DeadLetter, stack: bool, body: bool) -> None:
    """One dead letter with its failure headers (and stack, body when asked)."""
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
        rows.append(("body", body_text(letter)))
    for name, value in rows:
        # Header text is the sender's: escaped, and never read as rich markup.
        shown = "-" if value in (None, "") else printable(str(value), keep="\n\t")
        table.add_row(name, Text(shown))
    out.rule(Text(letter.id + (" (undecodable)" if letter.undecodable else "")))
    out.print(table)


def progress_bar() -> Progress:
    """A progress bar on stderr."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def render_report(report: Report, verb: str) -> None:
    """The outcome of a requeue or discard, counted by queue, type and outcome."""
    by_queue: Counter[tuple[str, str, str]] = Counter(
        (s.queue, type_label(s.type, s.undecodable), s.outcome) for s in report.steps)
    table = Table(title=f"{verb}{' (dry run: nothing changed)' if report.dry_run else ''}")
    for column in ("queue", "message type", "outcome", "count"):
        table.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
    for (queue, message_type, outcome), count in sorted(by_queue.items()):
        table.add_row(Text(queue), Text(message_type), outcome, str(count))
    out.print(table)


def warn_failed(report: Report) -> None:
    """Name each letter that could not be moved (it stays in its queue)."""
    for step in report.failed:
        err.print(Text.assemble(("failed", "red"), f" {step.id} in {step.queue}: {step.detail} "
                                "(left in its queue)"), soft_wrap=True)


def warn_undecodable(report: Report) -> None:
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
