"""Reading an ``amqp://`` or ``amqps://`` URL, and the text values of settings.

The URL is split by hand so that a password holding ``/``, ``?``, ``#`` or ``@`` can never spill
into a host, port or vhost, and a URL that cannot be read one way only is refused without
quoting any of it. See docs/connection.md.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import unquote

from eventyard.errors import ConfigurationError
from eventyard.rabbitmq.connection_settings import (
    AMQP_PORT,
    AMQPS_PORT,
    ConnectionSettings,
    bracketed,
    split_host,
)

_DISABLE = "disable"
_TRUE = ("1", "true", "yes", "on", "verify_peer")
_FALSE = ("0", "false", "no", "off", "verify_none")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")
_ENCODE = ("cannot read the AMQP URL one way only: a '/', '?', '#' or '@' in the user name or "
           "password must be percent-encoded (%2F, %3F, %23, %40; in Python: "
           "urllib.parse.quote(password, safe='')), and so must an '@' or '#' in the vhost. "
           "Or leave the password out of the URL and set RABBITMQ_PASSWORD, which needs no "
           "encoding")


def int_value(value: str | None, name: str, default: int) -> int:
    """``value`` as an integer (``default`` when empty); the error names the setting."""
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, not {value!r}") from None


def seconds_value(value: str | None, name: str, default: float) -> float:
    """``value`` as a number of seconds > 0 (``default`` when empty)."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds


def bool_value(value: str | None, name: str, default: bool) -> bool:
    """``value`` as a yes or no (``default`` when empty)."""
    if value is None or value == "":
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be one of {', '.join(_TRUE + _FALSE)}, not {value!r}")


def server_name_settings(value: str | None) -> dict[str, Any]:
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
        "heartbeat": int_value(seen.get("heartbeat"), "heartbeat in the AMQP URL", base.heartbeat),
        "connect_timeout": seconds_value(seen.get("connect_timeout"), "connect_timeout in the AMQP URL",
                                    base.connect_timeout),
        "publish_timeout": seconds_value(seen.get("publish_timeout"), "publish_timeout in the AMQP URL",
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
        tls_verify=bool_value(seen.get("verify"), "verify in the AMQP URL", base.tls_verify),
        tls_server_name=base.tls_server_name, tls_check_hostname=base.tls_check_hostname,
    )
    settings.update(server_name_settings(seen.get("server_name_indication")))
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
            hosts, port = tuple(bracketed(h) for h, _ in endpoints), endpoints[0][1]
        else:
            hosts = tuple(f"{bracketed(h)}:{p}" for h, p in endpoints)
    return ConnectionSettings(
        hosts=hosts or base.hosts, port=port, user=user, password=password, vhost=vhost,
        prefetch_count=base.prefetch_count, tls=tls, **_query_settings(query, base, tls))

