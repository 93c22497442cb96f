"""RabbitMQ connection settings: from arguments, an AMQP URL, or the ``RABBITMQ_*`` variables.

The environment is read here and only here. An explicit URL wins over the variables; the
variables fill in what the URL leaves out (TLS files, timeouts). A password never appears in
``repr``, logs or error messages: the URL is split by hand so that a password holding ``/``,
``?``, ``#`` or ``@`` can never spill into a host, port or vhost, and a URL that cannot be read
one way only is refused without quoting any of it. See docs/connection.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from eventyard.errors import ConfigurationError

ENV_HOST = "RABBITMQ_HOST"
ENV_PORT = "RABBITMQ_PORT"
ENV_USER = "RABBITMQ_USER"
ENV_PASSWORD = "RABBITMQ_PASSWORD"
ENV_VHOST = "RABBITMQ_VHOST"
ENV_HEARTBEAT = "RABBITMQ_HEARTBEAT"
ENV_PREFETCH = "RABBITMQ_PREFETCH_COUNT"
ENV_URL = "RABBITMQ_URL"
ENV_CONNECT_TIMEOUT = "RABBITMQ_CONNECT_TIMEOUT"
ENV_PUBLISH_TIMEOUT = "RABBITMQ_PUBLISH_TIMEOUT"
ENV_SSL = "RABBITMQ_SSL"
ENV_SSL_CAFILE = "RABBITMQ_SSL_CAFILE"
ENV_SSL_CERTFILE = "RABBITMQ_SSL_CERTFILE"
ENV_SSL_KEYFILE = "RABBITMQ_SSL_KEYFILE"
ENV_SSL_VERIFY = "RABBITMQ_SSL_VERIFY"
ENV_SSL_SERVER_NAME = "RABBITMQ_SSL_SERVER_NAME"

AMQP_PORT = 5672
AMQPS_PORT = 5671
_DISABLE = "disable"
_TRUE = ("1", "true", "yes", "on", "verify_peer")
_FALSE = ("0", "false", "no", "off", "verify_none")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")
_ENCODE = ("cannot read the AMQP URL one way only: a '/', '?', '#' or '@' in the user name or "
           "password must be percent-encoded (%2F, %3F, %23, %40; in Python: "
           "urllib.parse.quote(password, safe='')), and so must an '@' or '#' in the vhost. "
           "Or leave the password out of the URL and set RABBITMQ_PASSWORD, which needs no "
           "encoding")


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
        return (f"{scheme}://{credentials}@{_bracketed(address)}:{port}/"
                f"{quote(self.vhost, safe='')}?heartbeat={self.heartbeat}&name={quote(name)}")

    def describe(self) -> str:
        """Where this connects, without the password: ``amqp://guest@localhost:5672/``."""
        scheme = "amqps" if self.tls else "amqp"
        hosts = ",".join(f"{_bracketed(h)}:{p}" for h, p in self.endpoints)
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"{scheme}://{quote(self.user, safe='')}@{hosts}/{vhost}"

    def server_name(self, host: str) -> str:
        """The name the broker's certificate must carry when connecting to ``host``."""
        return self.tls_server_name or split_host(host, self.port)[0]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for these settings (None without TLS); reads the CA and key files."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(
                f"cannot load the TLS CA file {self.tls_ca_file!r} (cafile / RABBITMQ_SSL_CAFILE):"
                f" {_reason(error)}") from None
        if self.tls_cert_file:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (OSError, ssl.SSLError) as error:
                raise ConfigurationError(
                    f"cannot load the TLS client certificate {self.tls_cert_file!r} with key "
                    f"{self.tls_key_file or '(in the certificate file)'!r} (certfile / keyfile, "
                    f"RABBITMQ_SSL_CERTFILE / RABBITMQ_SSL_KEYFILE): {_reason(error)}") from None
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif not self.tls_check_hostname:
            context.check_hostname = False
        return context


def _reason(error: BaseException) -> str:
    return str(getattr(error, "strerror", None) or getattr(error, "reason", None) or error)


def _bracketed(host: str) -> str:
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


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, not {value!r}") from None


def _seconds(value: str | None, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds


def _bool(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be one of {', '.join(_TRUE + _FALSE)}, not {value!r}")


def _server_name(value: str | None) -> dict[str, Any]:
    """``server_name_indication``: a name to check the certificate against, or ``disable``."""
    if value is None or value == "":
        return {}
    if value.strip().lower() == _DISABLE:
        return {"tls_server_name": None, "tls_check_hostname": False}
    return {"tls_server_name": value.strip(), "tls_check_hostname": True}


# URL query parameter -> how to read it. Names follow RabbitMQ's URI query parameters
# (cacertfile, certfile, keyfile, verify, server_name_indication) and aiormq's (cafile).
_QUERY = ("heartbeat", "connect_timeout", "publish_timeout", "cafile", "cacertfile", "certfile",
          "keyfile", "verify", "server_name_indication")


def _query_settings(query: str, base: ConnectionSettings, tls: bool) -> dict[str, Any]:
    pairs = []
    for item in query.split("&") if query else ():
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ConfigurationError("the query of the AMQP URL must be name=value pairs joined by "
                                     f"&; known names: {', '.join(_QUERY)}")
        pairs.append((unquote(name), unquote(value)))  # '+' stays '+': file paths may hold it
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in _QUERY:
            raise ConfigurationError(f"unknown parameter {name!r} in the AMQP URL; known: "
                                     f"{', '.join(_QUERY)} (see docs/connection.md)")
        key = "cafile" if name == "cacertfile" else name
        if key in seen:
            raise ConfigurationError(f"parameter {name!r} is given twice in the AMQP URL")
        seen[key] = value
    settings: dict[str, Any] = {
        "heartbeat": _int(seen.get("heartbeat"), "heartbeat in the AMQP URL", base.heartbeat),
        "connect_timeout": _seconds(seen.get("connect_timeout"), "connect_timeout in the AMQP URL",
                                    base.connect_timeout),
        "publish_timeout": _seconds(seen.get("publish_timeout"), "publish_timeout in the AMQP URL",
                                    base.publish_timeout),
    }
    tls_given = [n for n in ("cafile", "certfile", "keyfile", "verify", "server_name_indication")
                 if n in seen]
    if tls_given and not tls:
        raise ConfigurationError(f"{', '.join(tls_given)} in an amqp:// URL: TLS settings need an "
                                 "amqps:// URL")
    if not tls:
        return settings
    settings.update(
        tls_ca_file=seen.get("cafile") or base.tls_ca_file,
        tls_cert_file=seen.get("certfile") or base.tls_cert_file,
        tls_key_file=seen.get("keyfile") or base.tls_key_file,
        tls_verify=_bool(seen.get("verify"), "verify in the AMQP URL", base.tls_verify),
        tls_server_name=base.tls_server_name, tls_check_hostname=base.tls_check_hostname,
    )
    settings.update(_server_name(seen.get("server_name_indication")))
    return settings


def parse_url(url: str, base: ConnectionSettings | None = None) -> ConnectionSettings:
    """Settings from an ``amqp://`` or ``amqps://`` URL (``host1,host2:5673`` for fail-over).

    ``base`` gives what the URL leaves out. Errors never quote the user's credentials.
    """
    base = base or ConnectionSettings()
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        shown = f", not {scheme}://" if sep and _SCHEME.fullmatch(scheme) else ""
        raise ConfigurationError(f"an AMQP URL starts with amqp:// or amqps://{shown}")
    tls = scheme.lower() == "amqps"
    # The authority ends at the first '/', '?' or '#' (RFC 3986). A password holding one of
    # them unencoded cuts it short: its '@' then shows up after the cut. Refuse that case
    # rather than guess, and never quote any part of it.
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in tail or "#" in tail:
        raise ConfigurationError(_ENCODE)
    userinfo, _, hostport = authority.rpartition("@")  # no host holds "@": the last one splits
    user_text, colon, password_text = userinfo.partition(":")
    path, _, query = tail.partition("?")
    hosts = tuple(h.strip() for h in hostport.split(",") if h.strip()) if hostport else ()
    default_port = AMQPS_PORT if tls else AMQP_PORT
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    # No password in the URL: the one from RABBITMQ_PASSWORD (or the argument) applies.
    user = unquote(user_text) if user_text else base.user
    password = unquote(password_text) if colon else base.password
    port = default_port
    if hosts:
        endpoints = [split_host(h, default_port) for h in hosts]
        if len({p for _, p in endpoints}) == 1:  # one port for all: keep it out of the names
            hosts, port = tuple(_bracketed(h) for h, _ in endpoints), endpoints[0][1]
        else:
            hosts = tuple(f"{_bracketed(h)}:{p}" for h, p in endpoints)
    return ConnectionSettings(
        hosts=hosts or base.hosts, port=port, user=user, password=password, vhost=vhost,
        prefetch_count=base.prefetch_count, tls=tls, **_query_settings(query, base, tls))


def _tls_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "tls": _bool(env.get(ENV_SSL), ENV_SSL, False),
        "tls_ca_file": env.get(ENV_SSL_CAFILE) or None,
        "tls_cert_file": env.get(ENV_SSL_CERTFILE) or None,
        "tls_key_file": env.get(ENV_SSL_KEYFILE) or None,
        "tls_verify": _bool(env.get(ENV_SSL_VERIFY), ENV_SSL_VERIFY, True),
    }
    settings.update(_server_name(env.get(ENV_SSL_SERVER_NAME)))
    return settings


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
    connect_timeout: float | None = None,
    publish_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Arguments first, then an explicit URL, then the ``RABBITMQ_*`` variables, then defaults."""
    env = os.environ if environ is None else environ
    tls = _tls_from_env(env)
    wants_tls = tls["tls"]
    url = url or env.get(ENV_URL) or None
    if url:
        tls["tls"] = True  # the URL's scheme decides; the variables fill in an amqps:// URL
    from_env = ConnectionSettings(
        hosts=tuple(h.strip() for h in env.get(ENV_HOST, "localhost").split(",") if h.strip())
        or ("localhost",),
        port=_int(env.get(ENV_PORT), ENV_PORT, AMQPS_PORT if wants_tls else AMQP_PORT),
        user=env.get(ENV_USER) or "guest",
        password=env.get(ENV_PASSWORD) or "guest",
        vhost=env.get(ENV_VHOST) or "/",
        heartbeat=_int(env.get(ENV_HEARTBEAT), ENV_HEARTBEAT, 60),
        prefetch_count=_int(env.get(ENV_PREFETCH), ENV_PREFETCH, 10),
        connect_timeout=_seconds(env.get(ENV_CONNECT_TIMEOUT), ENV_CONNECT_TIMEOUT, 10.0),
        publish_timeout=_seconds(env.get(ENV_PUBLISH_TIMEOUT), ENV_PUBLISH_TIMEOUT, 30.0),
        **tls,
    )
    settings = parse_url(url, from_env) if url else from_env
    if url and not settings.tls:
        given = [n for n in (ENV_SSL_CAFILE, ENV_SSL_CERTFILE, ENV_SSL_KEYFILE, ENV_SSL_VERIFY,
                             ENV_SSL_SERVER_NAME) if env.get(n)] + ([ENV_SSL] if wants_tls else [])
        if given:
            raise ConfigurationError(f"{', '.join(given)} set, but the AMQP URL is amqp:// (no "
                                     "TLS): use an amqps:// URL, or unset them")
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["hosts"] = tuple(h.strip() for h in host.split(",") if h.strip())
    for name, value in (("port", port), ("user", user), ("password", password), ("vhost", vhost),
                        ("heartbeat", heartbeat), ("prefetch_count", prefetch_count),
                        ("connect_timeout", connect_timeout),
                        ("publish_timeout", publish_timeout)):
        if value is not None:
            overrides[name] = value
    return dataclasses.replace(settings, **overrides) if overrides else settings
