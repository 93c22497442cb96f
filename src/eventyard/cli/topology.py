"""``eventyard topology``: what an application declares, and whether the broker holds it."""

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
    out,
    plural,
    print_json,
    run,
    settings,
    topology_options,
)
from eventyard.cli.migrate import migrate
from eventyard.rabbitmq.inspection import VerifyReport, connect, verify_topology
from eventyard.topology import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TTL_MS, Topology

app = typer.Typer(help="Show the topology an application declares; verify it on the broker.",
                  no_args_is_help=True)

AppArgument = Annotated[str, typer.Argument(help="module:attribute of the application's subscribers.")]
QueueType = Annotated[str, typer.Option("--queue-type", help="classic or quorum.")]


def topology_json(topology: Topology) -> dict[str, Any]:
    """``topology`` as JSON-ready data."""
    return {
        "exchanges": [{"name": e.name, "type": e.type, "durable": e.durable} for e in topology.exchanges],
        "queues": [{"name": q.name, "durable": q.durable, "arguments": dict(q.arguments)}
                   for q in topology.queues],
        "bindings": [{"exchange": b.exchange, "queue": b.queue, "routing_key": b.routing_key}
                     for b in topology.bindings],
    }


@app.command()
def show(app_spec: AppArgument, organization: Organization, service: Service,
         retry_ttl: RetryTtl = DEFAULT_RETRY_TTL_MS, max_retries: MaxRetries = DEFAULT_MAX_RETRIES,
         queue_type: QueueType = "classic", store_queue: StoreQueue = naming.STORE_QUEUE,
         no_store: NoStore = False, layout: Layout = "eventyard", json_output: JsonFlag = False) -> None:
    """The exchanges, queues (with arguments) and bindings the application declares."""
    options = topology_options(retry_ttl, max_retries, store_queue, no_store, queue_type, layout)
    topology = app_topology(app_spec, organization, service, options)
    if json_output:
        print_json(topology_json(topology))
        return
    exchanges = Table(title="Exchanges")
    for column in ("name", "type", "durable"):
        exchanges.add_column(column)
    for exchange in topology.exchanges:
        exchanges.add_row(exchange.name, exchange.type, str(exchange.durable))
    queues = Table(title="Queues")
    queues.add_column("name", overflow="fold")
    queues.add_column("arguments", overflow="fold")
    for queue in topology.queues:
        queues.add_row(queue.name, ", ".join(f"{k}={v}" for k, v in queue.arguments.items()) or "-")
    bindings = Table(title="Bindings")
    for column in ("exchange", "routing key", "queue"):
        bindings.add_column(column, overflow="fold")
    for binding in topology.bindings:
        bindings.add_row(binding.exchange, binding.routing_key, binding.queue)
    out.print(exchanges, queues, bindings)


def report_json(report: VerifyReport) -> dict[str, Any]:
    """``report`` as JSON-ready data."""
    return {"ok": report.ok, "exchanges_checked": report.exchanges_checked,
            "queues_checked": report.queues_checked, "bindings_expected": report.bindings_expected,
            "bindings_checked": False,
            "differences": [{"kind": d.kind, "name": d.name, "problem": d.problem, "detail": d.detail}
                            for d in report.differences],
            "notes": list(report.notes)}


@app.command()
def verify(app_spec: AppArgument, organization: Organization, service: Service,
           retry_ttl: RetryTtl = DEFAULT_RETRY_TTL_MS, max_retries: MaxRetries = DEFAULT_MAX_RETRIES,
           queue_type: QueueType = "classic", store_queue: StoreQueue = naming.STORE_QUEUE,
           no_store: NoStore = False, layout: Layout = "eventyard", json_output: JsonFlag = False,
           url: Url = None) -> None:
    """Compare the broker with what the application declares; exit 1 when they differ."""
    options = topology_options(retry_ttl, max_retries, store_queue, no_store, queue_type, layout)
    topology = app_topology(app_spec, organization, service, options)
    connection_settings = settings(url)

    async def check() -> VerifyReport:
        async with connect(connection_settings) as connection:
            return await verify_topology(connection, topology)

    report = run(check())
    if json_output:
        print_json(report_json(report))
    else:
        checked = (f"{plural(report.exchanges_checked, 'exchange')} and "
                   f"{plural(report.queues_checked, 'queue')} on {connection_settings.describe()}")
        if report.ok:
            out.print(f"[green]OK[/]: {checked} as expected")
        else:
            table = Table(title=f"{plural(len(report.differences), 'difference')} ({checked})")
            for column in ("kind", "name", "problem", "detail"):
                table.add_column(column, overflow="fold")
            for difference in report.differences:
                table.add_row(difference.kind, difference.name, difference.problem, difference.detail)
            out.print(table)
        for note in report.notes:
            out.print(f"note: {plural(report.bindings_expected, 'binding')} expected; {note}")
    if not report.ok:
        raise typer.Exit(1)


app.command()(migrate)  # eventyard topology migrate (eventyard/cli/migrate.py)
