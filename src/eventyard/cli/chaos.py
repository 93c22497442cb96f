"""``eventyard chaos``: prove with a soak that chaos loses no message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from eventyard.cli.common import (
    RUNTIME_ERROR,
    JsonFlag,
    MaxRetries,
    Url,
    out,
    print_json,
    reported,
    settings,
)
from eventyard.soak import SoakReport, run_soak

app = typer.Typer(name="chaos", help="Chaos runs that prove the delivery guarantees.",
                  no_args_is_help=True)


@app.command()
def soak(
    events: Annotated[int, typer.Option("--events", "-n", min=1, help="Events to publish.")] = 1000,
    subscribers: Annotated[int, typer.Option("--subscribers", "-k", min=1,
                                             help="Subscribers each event goes to.")] = 3,
    nack: Annotated[float, typer.Option("--nack", min=0.0, max=1.0,
                                        help="Share of deliveries nacked (requeued).")] = 0.2,
    failure: Annotated[float, typer.Option("--failure", min=0.0, max=1.0,
                                           help="Share of handler runs that fail.")] = 0.2,
    delay: Annotated[float, typer.Option("--delay", min=0.0,
                                         help="Seconds of delay before each handler.")] = 0.0,
    drops: Annotated[int, typer.Option("--drops", min=0,
                                       help="Times the consumer's connection is dropped.")] = 3,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for a reproducible run.")] = None,
    max_retries: MaxRetries = 2,
    retry_ttl: Annotated[int, typer.Option("--retry-ttl", "-rttl", min=0,
                                           help="Retry delay in milliseconds.")] = 100,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0,
                                           help="Seconds to wait for the system to go quiet.")] = 300.0,
    organization: Annotated[str | None, typer.Option(
        "--organization", "-o", help="Organisation to soak in (default: a new unique one).")] = None,
    memory: Annotated[bool, typer.Option("--memory", help="Soak the in-memory broker instead.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the soak's queues and exchanges.")] = False,
    url: Url = None,
    json: JsonFlag = False,
) -> None:
    """Publish events to several subscribers with chaos on, drop connections, count every message.

    Exits 1 unless every published message was handled or dead-lettered and nothing is left.
    """
    with _quiet_unless_verbose():
        _soak(events, subscribers, nack, failure, delay, drops, seed, max_retries, retry_ttl,
              timeout, keep, organization, memory, url, json)


@contextlib.contextmanager
def _quiet_unless_verbose() -> Iterator[None]:
    """Hide the reconnect and requeue warnings chaos provokes (``--verbose`` shows them)."""
    loggers = [logging.getLogger(name) for name in ("eventyard", "aiormq")]
    levels = [logger.level for logger in loggers]
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _soak(events: int, subscribers: int, nack: float, failure: float, delay: float, drops: int,
          seed: int | None, max_retries: int, retry_ttl: int, timeout: float, keep: bool,
          organization: str | None, memory: bool, url: str | None, json: bool) -> None:
    if memory:
        from eventyard.memory import MemoryBroker

        backend: object = MemoryBroker()
    else:
        from eventyard.rabbitmq import RabbitMqConnector

        backend = RabbitMqConnector(settings=settings(url))
    try:
        with reported():
            report = run_soak(backend,  # type: ignore[arg-type]
                              events=events, subscribers=subscribers, nack=nack, failure=failure,
                              delay=delay, drops=drops, seed=seed, max_retries=max_retries,
                              retry_ttl_ms=retry_ttl, timeout=timeout, keep=keep,
                              organization=organization)
    finally:
        backend.close()  # type: ignore[attr-defined]
    if json:
        print_json(report.to_dict())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(RUNTIME_ERROR)


def render(report: SoakReport) -> None:
    """Print the report as a table and a verdict."""
    table = Table(title=f"Chaos soak of {report.organization}.{report.service}",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 1), show_edge=False,
                  pad_edge=False, collapse_padding=True)
    # Short headers so the numbers fit an 80-column terminal; the legend below spells them out.
    # "pending" (messages still moving at the end) only appears when something is.
    show_pending = any(s.pending for s in report.subscribers)
    columns = ["sent", "handled", "retried", "dead", "dup", "lost"]
    columns += ["pending"] if show_pending else []
    rows = []
    for s in report.subscribers:
        name = s.queue.rsplit(".", 1)[-1] + (" *" if s.protected else "")
        cells = [s.published, s.handled, s.retried, s.dead_lettered, s.duplicates, s.lost]
        cells += [s.pending] if show_pending else []
        rows.append([name, *(str(c) for c in cells), str(s.chaos_nacks), str(s.chaos_failures)])
    headers = ["subscriber", *columns, "nacks", "fails"]
    for index, header in enumerate(headers):
        width = max([len(header), *(len(row[index]) for row in rows)])
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True,
                         min_width=width)
    for row in rows:
        table.add_row(*(_mark(int(cell)) if headers[i] in ("lost", "pending") else cell
                        for i, cell in enumerate(row)))
    out.print(table)
    out.print("sent: published; dead: dead-lettered; dup: handled more than once; nacks, fails: "
              "chaos-simulated; *: protected routing key (no chaos)")
    cfg = report.settings
    out.print(f"nack {cfg['nack']}, failure {cfg['failure']}, max retries {cfg['max_retries']}, "
              f"retry TTL {cfg['retry_ttl_ms']} ms, seed {cfg['seed']}; connection drops "
              f"{report.drops_done}/{report.drops_requested}; {report.seconds:.1f} s"
              f"{'; topology kept' if report.kept else ''}")
    if report.ok:
        out.print("[bold green]OK[/]: every message handled or dead-lettered, none lost.")
    elif not report.quiet:
        out.print(f"[bold red]NOT QUIET[/] after {cfg['timeout']:.0f} s: messages still moving.")
    else:
        out.print(f"[bold red]FAILED[/]: {report.lost} lost.")


def _mark(count: int) -> str:
    return f"[bold red]{count}[/]" if count else "0"
