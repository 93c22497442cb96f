"""Finding dead-letter queues through RabbitMQ's management HTTP API.

AMQP cannot list queues, so without the application's code (``--app``) the operator tools ask
the management plugin (``rabbitmq_management``, port 15672) which ``dead_letter.*`` queues a
vhost holds. Only names are read: message counts there are samples a few seconds old, so the
tools count over AMQP. The standard library's urllib is all this needs.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from eventyard import naming
from eventyard.errors import ManagementApiError
from eventyard.rabbitmq.settings import AMQP_PORT, AMQPS_PORT, ConnectionSettings

MANAGEMENT_URL_ENV = "EVENTYARD_MANAGEMENT_URL"
PORT = 15672
TLS_PORT = 15671
TIMEOUT = 5.0


def management_url(settings: ConnectionSettings) -> str:
    """``EVENTYARD_MANAGEMENT_URL``, else the broker's first host on 15672 (https on 15671 with
    TLS) when it listens on AMQP's default port."""
    configured = os.environ.get(MANAGEMENT_URL_ENV, "").strip()
    if configured:
        parts = urlsplit(configured)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ManagementApiError(f"{MANAGEMENT_URL_ENV} must be an http(s) URL, e.g. "
                                     "http://localhost:15672")
        # Credentials come from the connection settings, never from this URL (it is printed).
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
    if settings.port not in (AMQP_PORT, AMQPS_PORT):
        # The API's port follows the AMQP one only by convention: a broker moved off 5672 has
        # moved its API too, and guessing 15672 could list another broker's queues.
        raise ManagementApiError(
            f"the broker listens on port {settings.port}, not the default: set {MANAGEMENT_URL_ENV} "
            "to the address of its management API")
    host = settings.hosts[0] if settings.hosts else "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{TLS_PORT}" if settings.tls else f"http://{host}:{PORT}"


@dataclass(frozen=True, slots=True)
class ManagementApi:
    """The management API of one broker, as the connection settings' user."""

    base_url: str
    settings: ConnectionSettings

    @classmethod
    def of(cls, settings: ConnectionSettings) -> ManagementApi:
        """The API beside the broker of ``settings``."""
        return cls(management_url(settings), settings)

    def _context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=self.settings.tls_ca_file)
        if not self.settings.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def get(self, path: str) -> Any:
        """GET ``/api/<path>`` as JSON; ``ManagementApiError`` saying what went wrong."""
        credentials = f"{self.settings.user}:{self.settings.password}".encode()
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}",
            headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()})
        where = f"the management API at {self.base_url}"
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self._context()) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 401:
                raise ManagementApiError(
                    f"{where} refused user {self.settings.user!r} (wrong password, or the user has "
                    "no management tag)") from None
            if error.code == 404:
                raise ManagementApiError(f"{where} has no vhost {self.settings.vhost!r}") from None
            raise ManagementApiError(f"{where} answered HTTP {error.code}") from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ManagementApiError(
                f"{where} is not reachable ({reason}): is the rabbitmq_management plugin enabled? "
                f"(`rabbitmq-plugins enable rabbitmq_management`; {MANAGEMENT_URL_ENV} names "
                "another address)") from None

    def queue_names(self) -> list[str]:
        """Every queue of the settings' vhost."""
        rows = self.get(f"queues/{quote(self.settings.vhost, safe='')}?columns=name")
        return [str(row["name"]) for row in rows]

    def bindings(self) -> list[dict[str, Any]]:
        """Every binding of the settings' vhost."""
        return list(self.get(f"bindings/{quote(self.settings.vhost, safe='')}"))


def select_dead_letter_queues(names: Iterable[str], bindings: Iterable[dict[str, Any]] = (),
                              org: str | None = None, svc: str | None = None) -> list[str]:
    """The ``dead_letter.*`` queues among ``names`` of ``org`` (and ``svc``), sorted.

    A queue is the organisation's (service's) when its subscriber queue is named after it, or
    when it is bound to one of its dead-letter exchanges (the store's included).
    """
    dead = sorted({n for n in names if naming.is_dead_letter_queue(n)})
    if org is None:
        return dead
    prefix = f"{org}." if svc is None else f"{org}.{svc}."
    exchanges = {naming.store_dead_letter_exchange(org)}
    if svc is not None:
        exchanges.add(naming.dead_letter_exchange(org, svc))
    bound = {b.get("destination") for b in bindings if b.get("destination_type") == "queue"
             and (b.get("source") in exchanges
                  or (svc is None and str(b.get("source", "")).startswith(f"dead_letter.{org}.")))}
    return [n for n in dead if naming.subscriber_queue_of(n).startswith(prefix) or n in bound]


def discover_dead_letter_queues(settings: ConnectionSettings, org: str | None = None,
                                svc: str | None = None) -> list[str]:
    """The dead-letter queues of the settings' vhost (of ``org``, of ``org.svc``) through the
    management API; ``ManagementApiError`` when it is off, unreachable or refuses."""
    api = ManagementApi.of(settings)
    names = api.queue_names()
    return select_dead_letter_queues(names, api.bindings() if org is not None else (), org, svc)


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A queue as the management API last sampled it (counts may be a few seconds old)."""

    name: str
    type: str
    ready: int
    unacked: int
    consumers: int


@dataclass(frozen=True, slots=True)
class ServiceTopology:
    """What the broker holds for one service: its exchanges, queues and their bindings."""

    exchanges: list[tuple[str, str]]
    queues: list[QueueRow]
    bindings: list[tuple[str, str, str]]


def service_topology(settings: ConnectionSettings, org: str, svc: str) -> ServiceTopology:
    """The exchanges, queues and bindings of ``org.svc`` on the settings' vhost.

    The service's exchanges are those its names give (main, retry, dead-letter, delay, and the
    organisation's store exchanges); its queues are those bound to them, plus those named after
    it that no binding reaches.
    """
    naming.check_word(org, "organization")
    naming.check_word(svc, "service")
    api = ManagementApi.of(settings)
    vhost = quote(settings.vhost, safe="")
    ours = {naming.exchange(org, svc), naming.retry_exchange(org, svc),
            naming.dead_letter_exchange(org, svc), naming.delay_exchange(org, svc),
            naming.store_retry_exchange(org), naming.store_dead_letter_exchange(org)}
    exchanges = sorted((str(row["name"]), str(row.get("type", "")))
                       for row in api.get(f"exchanges/{vhost}?columns=name,type") if row["name"] in ours)
    bindings = sorted((str(b["source"]), str(b["destination"]), str(b.get("routing_key", "")))
                      for b in api.bindings()
                      if b.get("source") in ours and b.get("destination_type") == "queue")
    bound = {destination for _, destination, _ in bindings}
    prefixes = tuple(f"{p}{org}.{svc}." for p in ("", "retry.", "dead_letter.", "delay."))
    rows = api.get(f"queues/{vhost}?columns=name,type,messages_ready,messages_unacknowledged,consumers")
    queues = [QueueRow(str(r["name"]), str(r.get("type", "")), int(r.get("messages_ready") or 0),
                       int(r.get("messages_unacknowledged") or 0), int(r.get("consumers") or 0))
              for r in rows if r["name"] in bound or str(r["name"]).startswith(prefixes)]
    return ServiceTopology(exchanges, sorted(queues, key=lambda q: q.name), bindings)
