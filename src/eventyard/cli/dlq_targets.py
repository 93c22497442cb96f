"""Which dead-letter queues an ``eventyard dlq`` command works on, and which of their letters."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from eventyard import dead_letters, naming
from eventyard.cli.common import app_topology, err, fail, settings, topology_options
from eventyard.dead_letter_box import DeadLetterBox
from eventyard.dead_letters import Selection
from eventyard.errors import ConfigurationError, ManagementApiError, QueueNotFoundError
from eventyard.rabbitmq.management import discover_dead_letter_queues
from eventyard.rabbitmq.settings import ConnectionSettings


@dataclass(frozen=True, slots=True)
class Target:
    """The dead-letter queues a command works on."""

    org: str
    svc: str
    queues: list[str]
    explicit: bool
    store_queue: str
    settings: ConnectionSettings


def target_of(org: str, svc: str, app_spec: str | None, queues: list[str] | None,
              store_queue: str, no_store: bool, url: str | None) -> Target:
    """The queues named (``--queue``), else derived from ``--app``, else listed by the
    management API; exits with a message when a named one is not a dead-letter queue."""
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
        return discovered(org, svc, store_queue, settings(url))
    options = topology_options(5000, 5, store_queue, no_store)
    topology = app_topology(app_spec, org, svc, options)
    return Target(org, svc, dead_letters.dead_letter_queues(topology), False, store_queue, settings(url))


def discovered(org: str, svc: str, store_queue: str, connection: ConnectionSettings) -> Target:
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


async def present_queues(box: DeadLetterBox, target: Target) -> dict[str, int]:
    """The target's queues that exist, with the messages each holds; a missing named queue is
    an error, a derived one a note."""
    present = {}
    for queue in target.queues:
        count = await box.count(queue)
        if count is not None:
            present[queue] = count
        elif target.explicit:
            raise QueueNotFoundError(f"queue {queue!r} does not exist on {target.settings.describe()}")
        else:
            err.print(f"note: {queue} does not exist (run `eventyard configure`)")
    return present


def selection(ids: list[str] | None, types: list[str] | None, undecodable: bool = False) -> Selection:
    """The letters the ``--id``, ``--type`` and ``--undecodable`` options select."""
    return Selection.of(ids or (), types or (), undecodable)
