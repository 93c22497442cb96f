"""``eventyard topology migrate``: move a service's queues to another queue type, keeping every
message (see ``eventyard.rabbitmq.migrating``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from eventyard import naming
from eventyard.cli.common import (
    JsonFlag,
    Layout,
    MaxRetries,
    NoStore,
    Organization,
    RetryTtl,
    Service,
    StoreQueue,
    Url,
    app_topology,
    fail,
    out,
    plural,
    print_json,
    run,
    settings,
    topology_options,
)
from eventyard.errors import ManagementApiError
from eventyard.rabbitmq.inspection import connect
from eventyard.rabbitmq.management import ManagementApi
from eventyard.rabbitmq.migrating import MigrationReport
from eventyard.rabbitmq.migrating import migrate as migrate_queues
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.topology import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TTL_MS, BindingSpec, Topology

AppArgument = Annotated[str, typer.Argument(help="module:attribute of the application's subscribers.")]
To = Annotated[str, typer.Option("--to", help="The queue type to move to: quorum or classic.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def broker_bindings(connection_settings: ConnectionSettings,
                    topology: Topology) -> tuple[list[BindingSpec], str]:
    """The bindings the broker holds to the service's queues (another service's to the store,
    say), through the management API; none and a note when it cannot be asked."""
    owned = {q.name for q in topology.for_deletion().queues}
    try:
        rows = ManagementApi.of(connection_settings).bindings()
    except ManagementApiError as error:
        return [], (f"the management API cannot list the broker's bindings ({error}); only the "
                    "application's own bindings are put back: run `eventyard configure` for the "
                    "other services sharing these queues (the store) afterwards")
    return [BindingSpec(str(b["source"]), str(b["destination"]), str(b.get("routing_key", "")))
            for b in rows if b.get("destination_type") == "queue" and b.get("source")
            and b.get("destination") in owned], ""


def report_json(report: MigrationReport, note: str) -> dict[str, Any]:
    """``report`` as JSON-ready data."""
    return {"queue_type": report.queue_type, "dry_run": report.dry_run,
            "queues": [{"name": q.name, "action": q.action, "messages": q.messages,
                        "consumers": q.consumers, "leftover": q.leftover, "reason": q.reason}
                       for q in report.queues],
            "moved": report.moved, "notes": [note] if note else []}


def render(report: MigrationReport) -> None:
    """The plan (or what was done) as a table."""
    table = Table(title=f"Migration to {report.queue_type} queues"
                  f"{' (dry run: nothing changed)' if report.dry_run else ''}")
    for column in ("queue", "action", "messages", "consumers", "moved back", "why"):
        table.add_column(column, overflow="fold")
    for q in report.queues:
        action = {"keep": "keep (as configured)", "recreate": "move and declare again",
                  "missing": "missing (`eventyard configure` declares it)"}[q.action]
        if q.leftover is not None:
            action += f"; first {plural(q.leftover, 'message')} back from an interrupted run"
        moved = str(report.moved.get(q.name, "")) if not report.dry_run else ""
        table.add_row(q.name, action, str(q.messages), str(q.consumers), moved, q.reason)
    out.print(table)


def migrate(app_spec: AppArgument, organization: Organization, service: Service, to: To,
            retry_ttl: RetryTtl = DEFAULT_RETRY_TTL_MS, max_retries: MaxRetries = DEFAULT_MAX_RETRIES,
            store_queue: StoreQueue = naming.STORE_QUEUE, no_store: NoStore = False,
            layout: Layout = "eventyard", dry_run: DryRun = False, yes: Yes = False,
            json_output: JsonFlag = False, url: Url = None) -> None:
    """Move the service's queues to --to quorum (or classic) without losing a message.

    Consumers must be stopped; publishers may run. Run --dry-run first (docs/cluster.md).
    """
    if to not in ("quorum", "classic"):
        fail(f"--to must be quorum or classic, not {to!r}")
    options = topology_options(retry_ttl, max_retries, store_queue, no_store, to, layout)
    topology = app_topology(app_spec, organization, service, options)
    connection_settings = settings(url)
    extra, note = broker_bindings(connection_settings, topology)

    async def plan_or_apply(dry: bool) -> MigrationReport:
        async with connect(connection_settings, name="eventyard-migrate") as connection:
            return await migrate_queues(connection, topology, dry_run=dry, bindings=extra)

    report = run(plan_or_apply(True))
    if report.changes and not dry_run:
        if not yes and not json_output:
            render(report)
            typer.confirm(f"Move the messages of {plural(len(report.changes), 'queue')} and "
                          "declare them again?", abort=True)
        report = run(plan_or_apply(False))
    if json_output:
        print_json(report_json(report, note))
        return
    render(report)
    if note:
        out.print(f"note: {note}")
    if not report.changes:
        out.print(f"[green]OK[/]: every queue is already a {to} queue as configured")
    elif not report.dry_run:
        out.print(f"[green]Done[/]: {plural(sum(report.moved.values()), 'message')} moved back "
                  f"into {plural(len(report.moved), 'queue')}")
