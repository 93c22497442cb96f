"""``eventyard``: the operator CLI (typer + rich).

Sub-commands live in their own modules as ``typer.Typer`` apps added here with
``app.add_typer``. Optional command groups (``eventyard chaos`` from ``eventyard/cli/chaos.py``,
which must define ``app = typer.Typer(...)``) are added when their module exists.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Annotated, Any

import typer

from eventyard import naming
from eventyard.cli import dlq, topology
from eventyard.cli.common import (
    Layout,
    MaxRetries,
    NoStore,
    Organization,
    RetryTtl,
    Service,
    StoreQueue,
    Url,
    err,
    fail,
    load_subscribers,
    out,
    plural,
    reported,
    settings,
    topology_options,
)
from eventyard.consuming import ConsumerSettings
from eventyard.errors import ConfigurationError
from eventyard.observability import LEVELS, configure_logging
from eventyard.topology import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TTL_MS

logger = logging.getLogger(__name__)

app = typer.Typer(name="eventyard", help="Operate eventyard services on RabbitMQ.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(dlq.app, name="dlq")
app.add_typer(topology.app, name="topology")

OPTIONAL_GROUPS = {"chaos": "eventyard.cli.chaos", "console": "eventyard.cli.console",
                   "outbox": "eventyard.cli.outbox"}

AppArgument = Annotated[str, typer.Argument(help="module:attribute: a list of MessageSubscriber "
                                                 "or a callable returning one.")]
QueueType = Annotated[str, typer.Option("--queue-type", help="classic or quorum.")]
LogLevel = Annotated[str | None, typer.Option(
    "--log-level", help=f"Level of eventyard's log lines: {', '.join(LEVELS)} (other libraries "
    "log warnings and above). Default: warning, info with -v.", show_default=False)]
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", min=0, max=65535, show_default=False,
    help="Serve Prometheus metrics on this port (/metrics; needs eventyard[prometheus]).")]
MetricsAddr = Annotated[str, typer.Option("--metrics-addr", help="Address the metrics are served on.")]
LogJson = Annotated[bool, typer.Option("--log-json", help="Log one JSON object per line (for log "
                                                           "shippers), with queue, message and "
                                                           "correlation ids as fields.")]


def _add_optional_groups() -> None:
    for name, module_name in OPTIONAL_GROUPS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        app.add_typer(module.app, name=name)


_add_optional_groups()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"eventyard {version('eventyard')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            out.print("eventyard (not installed: version unknown)")
        raise typer.Exit()


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what eventyard does.")]
          = False,
          _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="Print eventyard's version and exit.")] = False,
          ) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def configure(app_spec: AppArgument, organization: Organization, service: Service,
              retry_ttl: RetryTtl = DEFAULT_RETRY_TTL_MS, max_retries: MaxRetries = DEFAULT_MAX_RETRIES,
              queue_type: QueueType = "classic", store_queue: StoreQueue = naming.STORE_QUEUE,
              no_store: NoStore = False, layout: Layout = "eventyard", url: Url = None) -> None:
    """Declare the application's exchanges, queues and bindings (idempotent)."""
    from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer

    subscribers = load_subscribers(app_spec)
    options = topology_options(retry_ttl, max_retries, store_queue, no_store, queue_type, layout)
    connector = RabbitMqConnector(settings=settings(url))
    try:
        with reported():
            configurer = RabbitMqMessageConfigurer(connector, organization, service, options=options)
            declared = configurer.topology(subscribers)
            configurer.configure_subscribers(subscribers)
    finally:
        connector.close()
    out.print(f"declared {plural(len(declared.exchanges), 'exchange')}, "
              f"{plural(len(declared.queues), 'queue')} and {plural(len(declared.bindings), 'binding')} "
              f"for {organization}.{service} on {connector.settings.describe()}")


@app.command()
def consume(app_spec: AppArgument, organization: Organization, service: Service,
            max_retries: MaxRetries = DEFAULT_MAX_RETRIES, retry_ttl: RetryTtl = DEFAULT_RETRY_TTL_MS,
            queue_type: QueueType = "classic", store_queue: StoreQueue = naming.STORE_QUEUE,
            no_store: NoStore = False, layout: Layout = "eventyard",
            no_configure: Annotated[bool, typer.Option(
                "--no-configure", help="Do not declare the topology before consuming.")] = False,
            prefetch: Annotated[int | None, typer.Option(min=1, help="Unacked messages per queue.")]
            = None,
            concurrency: Annotated[int | None, typer.Option(min=1, help="Handlers at once per queue.")]
            = None,
            url: Url = None, log_level: LogLevel = None, log_json: LogJson = False,
            metrics_port: MetricsPort = None, metrics_addr: MetricsAddr = "0.0.0.0") -> None:
    """Consume the application's queues until SIGINT or SIGTERM, then stop gracefully."""
    from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer, RabbitMqMessageConsumer

    _configure_logging(log_level, log_json)
    metrics = _serve_metrics(metrics_port, metrics_addr) if metrics_port is not None else None
    subscribers = load_subscribers(app_spec)
    options = topology_options(retry_ttl, max_retries, store_queue, no_store, queue_type, layout)
    connector = RabbitMqConnector(settings=settings(url))
    try:
        with reported():
            if not no_configure:
                RabbitMqMessageConfigurer(connector, organization, service,
                                          options=options).configure_subscribers(subscribers)
            consumer = RabbitMqMessageConsumer(
                connector, organization, service, max_retries,
                settings=ConsumerSettings(prefetch=prefetch or connector.settings.prefetch_count,
                                          concurrency=concurrency or 1, store_queue=store_queue),
                options=options)
            consumer.add_subscribers(subscribers)
            err.print(f"consuming {organization}.{service} on {connector.settings.describe()} "
                      "(Ctrl-C or SIGTERM to stop)")
            consumer.run()
    finally:
        connector.close()
        if metrics is not None:
            metrics.shutdown()
    err.print("stopped")


@app.command()
def asyncapi(organization: Organization, service: Service,
             app_spec: Annotated[str, typer.Option("--app", help="module:attribute of the "
                                                   "application's subscribers.")],
             output: Annotated[str | None, typer.Option(
                 "--output", help="Write the document here instead of stdout.")] = None,
             url: Url = None) -> None:
    """Print the AsyncAPI 3.0 document of what the application receives (JSON)."""
    from eventyard.asyncapi import asyncapi_document

    subscribers = load_subscribers(app_spec)
    try:
        document = asyncapi_document(organization, service, subscribers, settings=settings(url))
    except ConfigurationError as error:
        fail(str(error))
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    with open(output, "w", encoding="utf-8") as stream:
        stream.write(text)
    err.print(f"wrote {output}")


def _configure_logging(level: str | None, json_lines: bool) -> None:
    """``--log-level`` and ``--log-json``: nothing changes without them."""
    if level is None and not json_lines:
        return
    if level is not None and level.strip().lower() not in LEVELS:
        fail(f"--log-level {level!r} is not one of {', '.join(LEVELS)}")
    configure_logging(level if level is not None else
                      logging.getLogger("eventyard").getEffectiveLevel(), json_lines=json_lines)


def _serve_metrics(port: int, addr: str) -> Any:
    """``--metrics-port``: Prometheus metrics over HTTP for the consumer's life."""
    try:
        from eventyard.prometheus import serve_metrics

        server = serve_metrics(port, addr)
    except ConfigurationError as error:
        fail(str(error))
    err.print(f"serving metrics on http://{addr}:{server.server_port}/metrics")
    return server


def main() -> None:
    """Entry point of the ``eventyard`` command."""
    app()


if __name__ == "__main__":
    main()
