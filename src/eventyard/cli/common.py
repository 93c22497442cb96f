"""What the CLI commands share: broker settings, loading an application, errors, consoles."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Coroutine, Iterator, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.exceptions
from rich.console import Console
from rich.text import Text

from eventyard.errors import ConfigurationError, EventyardError, TopologyMismatchError
from eventyard.rabbitmq.settings import ConnectionSettings, settings_from
from eventyard.subscribers import MessageSubscriber, subscriptions_of
from eventyard.topology import Topology, TopologyOptions, build_topology

T = TypeVar("T")

logger = logging.getLogger(__name__)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

USAGE_ERROR = 2
RUNTIME_ERROR = 1

Organization = Annotated[str, typer.Option("--organization", "-o",
                                           help="Organisation (first word of every name).")]
Service = Annotated[str, typer.Option("--service", "-s", help="Service name.")]
Url = Annotated[str | None, typer.Option(
    "--url", help="AMQP URL; default: RABBITMQ_URL or RABBITMQ_HOST/PORT/USER/PASSWORD/VHOST.",
    show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
StoreQueue = Annotated[str, typer.Option("--store-queue", help="Name of the store queue.")]
NoStore = Annotated[bool, typer.Option("--no-store", help="The application declares no store queues.")]
Layout = Annotated[str, typer.Option(
    "--layout", help="eventyard (default), or petisco: exactly what petisco 2.2.3 declares "
    "(a 5 s TTL on main queues, petisco's store bindings), to share a vhost with petisco services.")]
RetryTtl = Annotated[int, typer.Option("--retry-ttl", "-rttl", min=0,
                                       help="Retry delay in milliseconds (retry queues' x-message-ttl).")]
MaxRetries = Annotated[int, typer.Option("--max-retries", "-mr", min=0,
                                         help="Retries after the first attempt before dead-lettering.")]


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code`` (2: usage, 1: runtime)."""
    # A Text, not markup: the message may quote a queue name or a broker reply with brackets.
    err.print(Text.assemble(("Error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


def settings(url: str | None) -> ConnectionSettings:
    """Connection settings from ``--url`` or the ``RABBITMQ_*`` variables."""
    try:
        return settings_from(url)
    except ConfigurationError as error:
        fail(str(error))


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn eventyard errors raised inside into ``Error: ...`` and an exit status.

    Bad input (a wrong option, name or application) exits 2; what the broker holds or does
    (a topology mismatch, an unreachable broker) exits 1, and so does anything unexpected: it
    is reported in one line (``--verbose`` logs its traceback), never as a traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
        raise  # typer's own way out (``fail`` raises it), not an error of the command
    except TopologyMismatchError as error:
        fail(str(error), RUNTIME_ERROR)
    except ConfigurationError as error:  # a queue that does not exist included
        fail(str(error))
    except EventyardError as error:
        fail(str(error), RUNTIME_ERROR)
    except Exception as error:
        logger.info("unexpected error", exc_info=True)
        text = str(error) or "no details"
        fail(f"unexpected {type(error).__name__}: {text[:500]} (run `eventyard --verbose ...` for "
             "the traceback)", RUNTIME_ERROR)


@contextlib.contextmanager
def quiet_aiormq() -> Iterator[None]:
    """aiormq logs a lost connection with a traceback; the command reports it in one line.

    Left as it is with ``--verbose`` (the root logger at INFO or below).
    """
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        yield
        return
    noisy = logging.getLogger("aiormq")
    level = noisy.level
    noisy.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        noisy.setLevel(level)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; turn eventyard errors into a message and an exit status."""
    with reported(), quiet_aiormq():
        return asyncio.run(coro)


def load_subscribers(spec: str) -> list[MessageSubscriber]:
    """Import ``module:attribute``: a list of subscribers, or a callable returning one."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        fail(f"application {spec!r} must be given as module:attribute (e.g. myapp.subscribers:subscribers)")
    if os.getcwd() not in sys.path:  # like uvicorn: the current directory holds the application
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        fail(f"cannot import {module_name!r}: {error}")
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            fail(f"{module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, MessageSubscriber):
        target = target()
    if isinstance(target, MessageSubscriber):
        target = [target]
    if not isinstance(target, list | tuple) or not all(isinstance(s, MessageSubscriber) for s in target):
        fail(f"{spec} is not a list of MessageSubscriber (nor a callable returning one)")
    try:
        subscriptions_of(target)
    except ConfigurationError as error:
        fail(f"{spec}: {error}")
    return list(target)


def topology_options(retry_ttl: int, max_retries: int, store_queue: str, no_store: bool,
                     queue_type: str = "classic", layout: str = "eventyard") -> TopologyOptions:
    """Topology options from command-line values (exit 2 when they are invalid)."""
    values: dict[str, Any] = {"retry_ttl_ms": retry_ttl, "max_retries": max_retries,
                              "store": not no_store, "store_queue": store_queue,
                              "queue_type": queue_type}
    try:
        if layout == "petisco":
            return TopologyOptions.petisco(**values)
        return TopologyOptions(layout=layout, **values)  # type: ignore[arg-type]
    except ConfigurationError as error:
        fail(str(error))


def app_topology(spec: str, org: str, svc: str, options: TopologyOptions) -> Topology:
    """The topology the application ``spec`` declares for ``org``/``svc``."""
    subscribers = load_subscribers(spec)
    try:
        return build_topology(org, svc, subscriptions_of(subscribers), options)
    except ConfigurationError as error:
        fail(str(error))


def print_json(document: Any) -> None:
    """Print ``document`` as JSON on stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def plural(count: int, word: str) -> str:
    """``1 message`` / ``3 messages``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def join(names: Sequence[str]) -> str:
    """Names for a message, comma separated."""
    return ", ".join(names)
