"""``eventyard chaos``: prove with a soak that chaos loses no message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

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
    services: Annotated[int, typer.Option(
        "--services", min=1,
        help="Services of the organisation: above 1, a fleet with cross-service subscribers "
             "and one store.")] = 1,
    nack: Annotated[float, typer.Option("--nack", min=0.0, max=1.0,
                                        help="Share of deliveries nacked (requeued).")] = 0.2,
    failure: Annotated[float, typer.Option("--failure", min=0.0, max=1.0,
                                           help="Share of handler runs that fail.")] = 0.2,
    delay: Annotated[float, typer.Option("--delay", min=0.0,
                                         help="Seconds of delay before each handler.")] = 0.0,
    drops: Annotated[int, typer.Option("--drops", min=0,
                                       help="Times each consumer's connection is dropped.")] = 3,
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
        _soak(events, subscribers, services, nack, failure, delay, drops, seed, max_retries,
              retry_ttl, timeout, keep, organization, memory, url, json)


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


def _soak(events: int, subscribers: int, services: int, nack: float, failure: float,
          delay: float, drops: int, seed: int | None, max_retries: int, retry_ttl: int,
          timeout: float, keep: bool, organization: str | None, memory: bool, url: str | None,
          json: bool) -> None:
    if memory:
        from eventyard.memory import MemoryBroker

        broker: object = MemoryBroker()
    else:
        from eventyard.rabbitmq import RabbitMqConnector

        broker = RabbitMqConnector(settings=settings(url))
    try:
        with reported():
            report = run_soak(broker,  # type: ignore[arg-type]
                              events=events, subscribers=subscribers, services=services,
                              nack=nack, failure=failure,
                              delay=delay, drops=drops, seed=seed, max_retries=max_retries,
                              retry_ttl_ms=retry_ttl, timeout=timeout, keep=keep,
                              organization=organization)
    finally:
        broker.close()  # type: ignore[attr-defined]
    if json:
        print_json(report.to_dict())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(RUNTIME_ERROR)


def render(report: SoakReport) -> None:
    """Print the report as tables (per service for a fleet, per subscriber) and a verdict."""
    fleet = len(report.services) > 1
    if fleet:
        _render_services(report)
    title = (f"Chaos soak of {report.organization}.{report.service}" if not fleet
             else "Subscribers by consuming service")
    # "pending" (messages still moving at the end) only appears when something is.
    show_pending = any(s.pending for s in report.subscribers)
    columns = ["sent", "handled", "retried", "dead", "dup", "lost"]
    columns += ["pending"] if show_pending else []
    rows: list[list[str]] = []
    for service in report.services if fleet else [None]:
        if service is not None:
            rows.append([f"[bold]{service.service}[/]"])
        for s in report.subscribers:
            if service is not None and s.service != service.service:
                continue
            name = s.handler or s.queue.rsplit(".", 1)[-1]
            name += f" ({s.publisher})" if s.publisher else ""
            name += " *" if s.protected else ""
            cells = [s.published, s.handled, s.retried, s.dead_lettered, s.duplicates, s.lost]
            cells += [s.pending] if show_pending else []
            rows.append([("  " if fleet else "") + name, *(str(c) for c in cells),
                         str(s.chaos_nacks), str(s.chaos_failures)])
    _print_table(title, ["subscriber", *columns, "nacks", "fails"], rows)
    legend = ("sent: published; dead: dead-lettered; dup: handled more than once; nacks, fails: "
              "chaos-simulated; *: protected routing key (no chaos)")
    if fleet:
        legend += ("; (soakN): follows that service's event; store_handler: every event of "
                   f"the organisation (queue {report.store_queue})")
    out.print(legend)
    cfg = report.settings
    drops = f" ({report.drops_requested // len(report.services)} per consumer)" if fleet else ""
    out.print(f"nack {cfg['nack']}, failure {cfg['failure']}, max retries {cfg['max_retries']}, "
              f"retry TTL {cfg['retry_ttl_ms']} ms, seed {cfg['seed']}; connection drops "
              f"{report.drops_done}/{report.drops_requested}{drops}; {report.seconds:.1f} s"
              f"{'; topology kept' if report.kept else ''}")
    if report.ok:
        out.print("[bold green]OK[/]: every message handled or dead-lettered, none lost.")
    elif not report.quiet:
        out.print(f"[bold red]NOT QUIET[/] after {cfg['timeout']:.0f} s: messages still moving.")
    else:
        out.print(f"[bold red]FAILED[/]: {report.lost} lost.")


def _render_services(report: SoakReport) -> None:
    """One row per service: what it published, and its consumer's subscribers summed up."""
    show_pending = any(s.pending for s in report.services)
    columns = ["emitted", "sent", "handled", "retried", "dead", "dup", "lost"]
    columns += ["pending"] if show_pending else []
    rows = []
    for s in report.services:
        cells = [s.emitted, s.published, s.handled, s.retried, s.dead_lettered, s.duplicates,
                 s.lost]
        cells += [s.pending] if show_pending else []
        rows.append([s.service, *(str(c) for c in cells), f"{s.drops_done}/{s.drops_requested}"])
    _print_table(f"Chaos soak of {report.organization}: {len(report.services)} services",
                 ["service", *columns, "drops"], rows)
    out.print("emitted: events the service published; sent: messages its consumer's "
              "subscribers should receive; drops: its consumer's connection drops")
    out.print()


def _print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A compact table: short headers so the numbers fit an 80-column terminal."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 1), show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for index, header in enumerate(headers):
        width = max([len(header), *(len(_plain(row[index])) for row in rows if index < len(row))])
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True,
                         min_width=width)
    for row in rows:
        table.add_row(*(_mark(int(cell)) if headers[i] in ("lost", "pending") else cell
                        for i, cell in enumerate(row)))
    out.print(table)


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _mark(count: int) -> str:
    return f"[bold red]{count}[/]" if count else "0"
