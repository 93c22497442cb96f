"""The TLS context of a RabbitMQ connection, with errors that name the setting to fix."""

from __future__ import annotations

import ssl

from eventyard.errors import ConfigurationError


def ssl_context(*, ca_file: str | None, cert_file: str | None, key_file: str | None,
                verify: bool, check_hostname: bool) -> ssl.SSLContext:
    """A client TLS context; reads the CA file and the client certificate and key."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"cannot load the TLS CA file {ca_file!r} (cafile / RABBITMQ_SSL_CAFILE):"
            f" {_reason(error)}") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(
                f"cannot load the TLS client certificate {cert_file!r} with key "
                f"{key_file or '(in the certificate file)'!r} (certfile / keyfile, "
                f"RABBITMQ_SSL_CERTFILE / RABBITMQ_SSL_KEYFILE): {_reason(error)}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not check_hostname:
        context.check_hostname = False
    return context


def _reason(error: BaseException) -> str:
    return str(getattr(error, "strerror", None) or getattr(error, "reason", None) or error)
