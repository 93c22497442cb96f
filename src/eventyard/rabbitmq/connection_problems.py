"""Why a connection to RabbitMQ could not be opened, in words the user can act on.

A failure to connect is told apart (broker down, no answer, TLS not trusted or refused, login
refused, vhost missing, vhost not allowed) and each gets its own hint; the password never
shows. Both the asyncio connections (``connecting``) and the blocking one explain failures here.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

import aiormq.exceptions as amqp_errors

from eventyard.errors import BrokerConnectionError, ConfigurationError
from eventyard.rabbitmq.settings import ConnectionSettings

_DOWN = ("Is the broker running? Check RABBITMQ_HOST / RABBITMQ_PORT (or the host and port in "
         "the URL).")
_UNKNOWN_HOST = "Check the host name in RABBITMQ_HOST (or in the URL)."
_SLOW = ("Is a firewall dropping the connection, or the broker overloaded? Check RABBITMQ_HOST / "
         "RABBITMQ_PORT; RABBITMQ_CONNECT_TIMEOUT (connect_timeout= in the URL) sets the limit.")
_LOGIN = ("Check RABBITMQ_USER / RABBITMQ_PASSWORD (or the user and password in the URL, "
          "percent-encoded there).")
_NO_VHOST = ("Set RABBITMQ_VHOST (or the URL's path: amqp://host/VHOST, %2F for '/') to a vhost "
             "that exists, or create it: rabbitmqctl add_vhost VHOST.")
_VHOST_REFUSED = ("Grant the user access (rabbitmqctl set_permissions -p VHOST USER '.*' '.*' "
                  "'.*'), or set RABBITMQ_VHOST (or the URL's path) to a vhost it may use.")
_UNTRUSTED = ("Set RABBITMQ_SSL_CAFILE (cafile= in the URL) to the CA certificate that signed the "
              "broker's certificate.")
_WRONG_NAME = ("Connect by a name the certificate carries, or set RABBITMQ_SSL_SERVER_NAME "
               "(server_name_indication= in the URL) to it.")
_NOT_TLS = ("That port does not speak TLS: use the broker's TLS port (5671 by default), or an "
            "amqp:// URL.")
_NEEDS_CERT = ("The broker requires a client certificate: set RABBITMQ_SSL_CERTFILE and "
               "RABBITMQ_SSL_KEYFILE (certfile= and keyfile= in the URL).")
_CERT_REFUSED = ("Use a client certificate signed by a CA the broker trusts (its "
                 "ssl_options.cacertfile), and not expired.")
_PLAIN_TO_TLS = "Is that the broker's TLS port? Use an amqps:// URL there (or RABBITMQ_SSL=true)."
_GENERIC = ("Is the broker running and reachable? Check RABBITMQ_HOST / RABBITMQ_PORT / "
            "RABBITMQ_USER / RABBITMQ_PASSWORD / RABBITMQ_VHOST, or the URL.")


class HandshakeRefused(Exception):
    """The broker closed the connection during the AMQP handshake.

    ``stage`` is ``"login"`` (after the credentials) or ``"vhost"`` (after opening the vhost).
    """

    def __init__(self, stage: str, reply_code: int, reply_text: str) -> None:
        super().__init__(f"{reply_code} {reply_text}")
        self.stage, self.reply_code, self.reply_text = stage, reply_code, reply_text


@dataclass(frozen=True)
class Problem:
    """Why one host could not be connected to, and what to do about it."""

    endpoint: str
    reason: str
    hint: str


def scrub(text: str, settings: ConnectionSettings) -> str:
    """``text`` with the password masked (a short one, or one equal to the user, is left)."""
    secret = settings.password
    if secret and secret != settings.user and len(secret) >= 3:
        text = text.replace(secret, "****")
    return text


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__
    return chain


def _refused(error: BaseException) -> bool:
    """Refused on every address of the host (asyncio then raises one plain OSError)."""
    return isinstance(error, OSError) and (
        error.errno == errno.ECONNREFUSED
        or (str(error).startswith("Multiple exceptions") and "Connect call failed" in str(error)
            and "[Errno 111]" in str(error)))


def _tls_problem(error: ssl.SSLError, settings: ConnectionSettings, host: str) -> tuple[str, str]:
    text = str(getattr(error, "verify_message", None) or error.reason or error)
    if isinstance(error, ssl.SSLCertVerificationError):
        if getattr(error, "verify_code", None) == 62 or "hostname" in text.lower():
            return (f"TLS: the broker's certificate is not for {settings.server_name(host)!r} "
                    f"({text})", _WRONG_NAME)
        return f"TLS: the broker's certificate is not trusted ({text})", _UNTRUSTED
    upper = str(error).upper()
    if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER_FAILURE" in upper:
        return "TLS: the server did not answer in TLS", _NOT_TLS
    wants_cert = "CERTIFICATE_REQUIRED" in upper or "HANDSHAKE_FAILURE" in upper
    if wants_cert and not settings.tls_cert_file:
        return "TLS: the broker refused the connection without a client certificate", _NEEDS_CERT
    if any(alert in upper for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_EXPIRED",
                                        "DECRYPT_ERROR", "HANDSHAKE_FAILURE")):
        return f"TLS: the broker refused the client certificate ({text})", _CERT_REFUSED
    return f"TLS handshake failed ({text})", _UNTRUSTED


def explain(error: BaseException, settings: ConnectionSettings, host: str, port: int) -> Problem:
    """What ``error``, raised while connecting to ``host``, means for the user."""
    endpoint = f"{host}:{port}"
    user, vhost = settings.user, settings.vhost
    for cause in _causes(error):
        if isinstance(cause, HandshakeRefused):
            text = scrub(cause.reply_text, settings)
            if cause.stage == "login":
                return Problem(endpoint, f"authentication failed for user {user!r}", _LOGIN)
            if cause.reply_code == 0:  # refused, but the broker's words could not be had
                return Problem(endpoint, f"the broker refused vhost {vhost!r} for user {user!r}: "
                               "it does not exist, or the user may not use it", _VHOST_REFUSED)
            if "not found" in text or "does not exist" in text:
                return Problem(endpoint, f"vhost {vhost!r} does not exist", _NO_VHOST)
            if "refused" in text:
                return Problem(endpoint, f"access refused to vhost {vhost!r} for user {user!r}",
                               _VHOST_REFUSED)
            return Problem(endpoint, f"the broker refused vhost {vhost!r} ({text})", _NO_VHOST)
        if isinstance(cause, amqp_errors.ProbableAuthenticationError):
            return Problem(endpoint, f"authentication failed for user {user!r}", _LOGIN)
        if isinstance(cause, amqp_errors.AuthenticationError):
            return Problem(endpoint, "the broker offers no login mechanism eventyard uses (PLAIN)",
                           _LOGIN)
        if isinstance(cause, ConfigurationError):
            return Problem(endpoint, str(cause), "")
        if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return explain(ConnectionResetError(), settings, host, port)  # hung up: see below
        if isinstance(cause, ssl.SSLError):
            reason, hint = _tls_problem(cause, settings, host)
            return Problem(endpoint, reason, hint)
        if isinstance(cause, ConnectionRefusedError) or _refused(cause):
            return Problem(endpoint, "connection refused: nothing listens there", _DOWN)
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return Problem(endpoint, f"host unreachable ({cause.strerror})", _DOWN)
        if isinstance(cause, socket.gaierror):
            return Problem(endpoint, f"cannot resolve host {host!r}", _UNKNOWN_HOST)
        if isinstance(cause, TimeoutError):
            return Problem(endpoint, f"no answer within {settings.connect_timeout:g}s", _SLOW)
        if isinstance(cause, ConnectionResetError | EOFError | amqp_errors.IncompatibleProtocolError):
            if settings.tls:
                # The broker answers a missing or untrusted client certificate by hanging up,
                # during the handshake or (TLS 1.3) just after it.
                if not settings.tls_cert_file:
                    return Problem(endpoint, "the broker closed the TLS connection: it wants a "
                                   "client certificate", _NEEDS_CERT)
                return Problem(endpoint, "the broker closed the TLS connection: it did not "
                               "accept the client certificate", _CERT_REFUSED)
            return Problem(endpoint, "the server closed the connection before the AMQP handshake",
                           _PLAIN_TO_TLS)
    if isinstance(error, amqp_errors.AMQPConnectionError) and settings.tls and (
            "reset" in str(error) or "closed" in str(error)):
        return explain(ConnectionResetError(), settings, host, port)
    text = scrub(str(error) or type(error).__name__, settings)
    return Problem(endpoint, text, _GENERIC)


def connection_error(settings: ConnectionSettings, problems: list[Problem]) -> BrokerConnectionError:
    """One error for every host that failed: each host's reason, then the hints."""
    reasons = "; ".join(f"{p.endpoint}: {p.reason}" for p in problems)
    hints = " ".join(dict.fromkeys(p.hint for p in problems if p.hint))
    return BrokerConnectionError(f"cannot connect to RabbitMQ at {settings.describe()}: "
                                 f"{reasons}. {hints}".rstrip())
