"""Where and how to connect to RabbitMQ: the settings, checked when they are made.

They come from arguments, an AMQP URL (``amqp_url``) or the ``RABBITMQ_*`` variables
(``settings``, the one place that reads the environment). A password never appears in ``repr``.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field
from urllib.parse import quote

from eventyard.errors import ConfigurationError
from eventyard.rabbitmq.tls import ssl_context as tls_context

AMQP_PORT = 5672
AMQPS_PORT = 5671


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """Where and how to connect.

    ``hosts`` lists fail-over hosts, tried in order; an entry may carry its own port
    (``"mq2:5673"``, ``"[::1]:5672"``), else ``port`` applies. The ``tls_*`` settings apply
    with ``tls`` only; ``publish_timeout`` bounds every publish until its confirm.
    """

    hosts: tuple[str, ...] = ("localhost",)
    port: int = AMQP_PORT
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    heartbeat: int = 60
    prefetch_count: int = 10
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None
    tls_check_hostname: bool = True
    connect_timeout: float = 10.0
    publish_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.hosts or any(not h for h in self.hosts):
            raise ConfigurationError("RabbitMQ host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"RabbitMQ port must be 1..65535, not {self.port}")
        for host in self.hosts:
            split_host(host, self.port)
        if self.heartbeat < 0:
            raise ConfigurationError(f"RabbitMQ heartbeat must be >= 0 seconds, not {self.heartbeat}")
        if self.prefetch_count < 1:
            raise ConfigurationError(f"RabbitMQ prefetch count must be >= 1, not {self.prefetch_count}")
        for name in ("connect_timeout", "publish_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"RabbitMQ {name.replace('_', ' ')} must be a number of "
                                         f"seconds > 0, not {value!r}")
        if not self.tls:
            given = [n for n in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
                     if getattr(self, n)]
            if given or not self.tls_verify or not self.tls_check_hostname:
                raise ConfigurationError(
                    f"TLS settings given ({', '.join(given) or 'verification'}) but the connection "
                    "does not use TLS: use an amqps:// URL or set RABBITMQ_SSL=true")
        if self.tls_key_file and not self.tls_cert_file:
            raise ConfigurationError("a TLS client key needs its certificate: set certfile "
                                     "(RABBITMQ_SSL_CERTFILE) too")

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """``(host, port)`` of each fail-over host, in order."""
        return tuple(split_host(host, self.port) for host in self.hosts)

    def url(self, host: str | None = None, *, name: str = "eventyard") -> str:
        """The AMQP URL of ``host`` (first host by default), password included: never log it.

        TLS files are not in it: pass ``ssl_context()`` to the client instead.
        """
        address, port = split_host(host or self.hosts[0], self.port)
        scheme = "amqps" if self.tls else "amqp"
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return (f"{scheme}://{credentials}@{bracketed(address)}:{port}/"
                f"{quote(self.vhost, safe='')}?heartbeat={self.heartbeat}&name={quote(name)}")

    def describe(self) -> str:
        """Where this connects, without the password: ``amqp://guest@localhost:5672/``."""
        scheme = "amqps" if self.tls else "amqp"
        hosts = ",".join(f"{bracketed(h)}:{p}" for h, p in self.endpoints)
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"{scheme}://{quote(self.user, safe='')}@{hosts}/{vhost}"

    def server_name(self, host: str) -> str:
        """The name the broker's certificate must carry when connecting to ``host``."""
        return self.tls_server_name or split_host(host, self.port)[0]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for these settings (None without TLS); reads the CA and key files."""
        if not self.tls:
            return None
        return tls_context(ca_file=self.tls_ca_file, cert_file=self.tls_cert_file,
                           key_file=self.tls_key_file, verify=self.tls_verify,
                           check_hostname=self.tls_check_hostname)


def bracketed(host: str) -> str:
    """``host`` as written in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def split_host(entry: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> ``(host, port)``."""
    host, port_text = entry, ""
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0 or (entry[end + 1:] and not entry[end + 1:].startswith(":")):
            raise ConfigurationError(f"RabbitMQ host {entry!r}: an IPv6 address is written "
                                     "[address] or [address]:port")
        host, port_text = entry[1:end], entry[end + 2:]
        if not host:
            raise ConfigurationError("RabbitMQ host must not be empty")
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
    elif ":" in entry:
        raise ConfigurationError(f"RabbitMQ host {entry!r}: write an IPv6 address in brackets, "
                                 "[address]:port")
    if not host:
        raise ConfigurationError("RabbitMQ host must not be empty")
    if entry.endswith(":") or port_text:
        if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ConfigurationError(f"the port of RabbitMQ host {host!r} must be a number "
                                     "1..65535")
        return host, int(port_text)
    return host, default_port
