"""``eventyard console``: serve the operator console (needs ``eventyard[console]``)."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import typer

from eventyard import naming
from eventyard.cli.common import StoreQueue, Url, err, fail, load_subscribers, settings
from eventyard.errors import ConfigurationError

TOKEN_ENV = "EVENTYARD_CONSOLE_TOKEN"

app = typer.Typer(help="A web page to group, inspect, retry and discard dead letters.",
                  invoke_without_command=True)


@app.callback()
def serve(host: Annotated[str, typer.Option("--host", help="Address to listen on (keep it local: "
                                                            "anyone reaching it sees message bodies).")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8642,
          organization: Annotated[str | None, typer.Option(
              "--organization", "-o", help="Only this organisation's dead-letter queues.")] = None,
          service: Annotated[str | None, typer.Option(
              "--service", "-s", help="Only this service's (with --organization).")] = None,
          queue: Annotated[list[str] | None, typer.Option(
              "--queue", "-q", help="A dead-letter queue to show (repeat, or separate with commas); "
                                    "default: those the management API lists.")] = None,
          limit: Annotated[int, typer.Option(min=1, help="Dead letters read per queue.")] = 1000,
          app_spec: Annotated[str | None, typer.Option(
              "--app", help="module:attribute of the application's subscribers: serve its AsyncAPI "
                            "document at /asyncapi.json (needs -o and -s).")] = None,
          store_queue: StoreQueue = naming.STORE_QUEUE, url: Url = None) -> None:
    """Serve the console on http://HOST:PORT until Ctrl-C."""
    if service is not None and organization is None:
        fail("--service needs --organization")
    names = [q.strip() for item in queue or [] for q in item.split(",") if q.strip()]
    for name in names:
        if not naming.is_dead_letter_queue(name):
            fail(f"{name!r} is not a dead-letter queue: only dead_letter.* queues are accepted")
    try:
        import uvicorn

        from eventyard.console import ConsoleConfig, create_app
    except ConfigurationError as error:
        fail(str(error))
    except ModuleNotFoundError as error:
        fail(f"the operator console needs {error.name}, which is not installed: "
             "pip install 'eventyard[console]'")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        token = secrets.token_urlsafe(24)
        err.print(f"{TOKEN_ENV} is not set: actions need this token, made for this run: {token}",
                  soft_wrap=True)
    config = ConsoleConfig(settings(url), token, organization, service, names, store_queue, limit)
    if host in ("0.0.0.0", "::", ""):
        config.allowed_hosts = ["*"]  # every address: whatever name reaches it
    elif host not in config.allowed_hosts:
        config.allowed_hosts.append(host)
    if app_spec is not None:
        if organization is None or service is None:
            fail("--app needs --organization and --service")
        from eventyard.asyncapi import asyncapi_document

        try:
            config.asyncapi = asyncapi_document(organization, service, load_subscribers(app_spec),
                                                settings=config.settings)
        except ConfigurationError as error:
            fail(str(error))
    err.print(f"eventyard console on http://{host}:{port}/ for {config.settings.describe()} "
              "(Ctrl-C to stop)", soft_wrap=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
