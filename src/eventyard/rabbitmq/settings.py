"""RabbitMQ connection settings: from arguments, an AMQP URL, or the ``RABBITMQ_*`` variables.

The environment is read here and only here. An explicit URL wins over the variables; a
password never appears in ``repr``, logs or error messages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from eventyard.errors import ConfigurationError

ENV_HOST = "RABBITMQ_HOST"
ENV_PORT = "RABBITMQ_PORT"
ENV_USER = "RABBITMQ_USER"
ENV_PASSWORD = "RABBITMQ_PASSWORD"
ENV_VHOST = "RABBITMQ_VHOST"
ENV_HEARTBEAT = "RABBITMQ_HEARTBEAT"
ENV_PREFETCH = "RABBITMQ_PREFETCH_COUNT"
ENV_URL = "RABBITMQ_URL"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """Where and how to connect. ``hosts`` lists fail-over hosts, tried in order."""

    hosts: tuple[str, ...] = ("localhost",)
    port: int = 5672
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    heartbeat: int = 60
    prefetch_count: int = 10
    tls: bool = False
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.hosts or any(not h for h in self.hosts):
            raise ConfigurationError("RabbitMQ host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"RabbitMQ port must be 1..65535, not {self.port}")
        if self.heartbeat < 0:
            raise ConfigurationError(f"RabbitMQ heartbeat must be >= 0 seconds, not {self.heartbeat}")
        if self.prefetch_count < 1:
            raise ConfigurationError(f"RabbitMQ prefetch count must be >= 1, not {self.prefetch_count}")

    def url(self, host: str | None = None, *, name: str = "eventyard") -> str:
        """The AMQP URL of ``host`` (first host by default), password included: never log it."""
        scheme = "amqps" if self.tls else "amqp"
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return (f"{scheme}://{credentials}@{host or self.hosts[0]}:{self.port}/"
                f"{quote(self.vhost, safe='')}?heartbeat={self.heartbeat}&name={quote(name)}")

    def describe(self) -> str:
        """Where this connects, without the password: ``amqp://guest@localhost:5672/``."""
        scheme = "amqps" if self.tls else "amqp"
        hosts = ",".join(self.hosts)
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"{scheme}://{self.user}@{hosts}:{self.port}/{vhost}"


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, not {value!r}") from None


def parse_url(url: str, base: ConnectionSettings | None = None) -> ConnectionSettings:
    """Settings from an ``amqp://`` or ``amqps://`` URL (``host1,host2`` for fail-over)."""
    base = base or ConnectionSettings()
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigurationError(f"not an AMQP URL: {error}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"AMQP URL must start with amqp:// or amqps://, not {parts.scheme or '(nothing)'}://")
    netloc = parts.netloc.rsplit("@", 1)
    credentials, hostport = (netloc if len(netloc) == 2 else ("", netloc[0]))
    user, _, password = credentials.partition(":")
    tls = parts.scheme == "amqps"
    default_port = 5671 if tls else 5672
    hosts: list[str] = []
    port = default_port
    for item in hostport.split(","):
        host, sep, port_text = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        if sep:
            port = _int(port_text, "port in the AMQP URL", default_port)
        if host:
            hosts.append(host)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return ConnectionSettings(
        hosts=tuple(hosts) or base.hosts, port=port,
        user=unquote(user) if user else base.user,
        password=unquote(password) if password else (base.password if not user else ""),
        vhost=vhost, tls=tls,
        heartbeat=_int(query.get("heartbeat"), "heartbeat in the AMQP URL", base.heartbeat),
        prefetch_count=base.prefetch_count, connect_timeout=base.connect_timeout,
    )


def settings_from(
    url: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    vhost: str | None = None,
    heartbeat: int | None = None,
    prefetch_count: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Arguments first, then an explicit URL, then the ``RABBITMQ_*`` variables, then defaults."""
    env = os.environ if environ is None else environ
    from_env = ConnectionSettings(
        hosts=tuple(h.strip() for h in env.get(ENV_HOST, "localhost").split(",") if h.strip())
        or ("localhost",),
        port=_int(env.get(ENV_PORT), ENV_PORT, 5672),
        user=env.get(ENV_USER) or "guest",
        password=env.get(ENV_PASSWORD) or "guest",
        vhost=env.get(ENV_VHOST) or "/",
        heartbeat=_int(env.get(ENV_HEARTBEAT), ENV_HEARTBEAT, 60),
        prefetch_count=_int(env.get(ENV_PREFETCH), ENV_PREFETCH, 10),
    )
    url = url or env.get(ENV_URL) or None
    settings = parse_url(url, from_env) if url else from_env
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["hosts"] = tuple(h.strip() for h in host.split(",") if h.strip())
    for name, value in (("port", port), ("user", user), ("password", password), ("vhost", vhost),
                        ("heartbeat", heartbeat), ("prefetch_count", prefetch_count)):
        if value is not None:
            overrides[name] = value
    return dataclasses.replace(settings, **overrides) if overrides else settings
