"""RabbitMQ connection settings: from arguments, an AMQP URL, or the ``RABBITMQ_*`` variables.

The environment is read here and only here. An explicit URL wins over the variables; the
variables fill in what the URL leaves out (TLS files, timeouts). A password never appears in
``repr``, logs or error messages. The settings themselves are in ``connection_settings``, the
URL's reading in ``amqp_url``, the TLS context in ``tls``. See docs/connection.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from eventyard.errors import ConfigurationError
from eventyard.rabbitmq.amqp_url import (
    bool_value,
    int_value,
    parse_url,
    seconds_value,
    server_name_settings,
)
from eventyard.rabbitmq.connection_settings import (
    AMQP_PORT,
    AMQPS_PORT,
    ConnectionSettings,
    split_host,
)

__all__ = ["AMQPS_PORT", "AMQP_PORT", "ConnectionSettings", "parse_url", "settings_from",
           "split_host"]

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


def _tls_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "tls": bool_value(env.get(ENV_SSL), ENV_SSL, False),
        "tls_ca_file": env.get(ENV_SSL_CAFILE) or None,
        "tls_cert_file": env.get(ENV_SSL_CERTFILE) or None,
        "tls_key_file": env.get(ENV_SSL_KEYFILE) or None,
        "tls_verify": bool_value(env.get(ENV_SSL_VERIFY), ENV_SSL_VERIFY, True),
    }
    settings.update(server_name_settings(env.get(ENV_SSL_SERVER_NAME)))
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
        port=int_value(env.get(ENV_PORT), ENV_PORT, AMQPS_PORT if wants_tls else AMQP_PORT),
        user=env.get(ENV_USER) or "guest",
        password=env.get(ENV_PASSWORD) or "guest",
        vhost=env.get(ENV_VHOST) or "/",
        heartbeat=int_value(env.get(ENV_HEARTBEAT), ENV_HEARTBEAT, 60),
        prefetch_count=int_value(env.get(ENV_PREFETCH), ENV_PREFETCH, 10),
        connect_timeout=seconds_value(env.get(ENV_CONNECT_TIMEOUT), ENV_CONNECT_TIMEOUT, 10.0),
        publish_timeout=seconds_value(env.get(ENV_PUBLISH_TIMEOUT), ENV_PUBLISH_TIMEOUT, 30.0),
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
