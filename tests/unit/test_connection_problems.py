"""How a failure to connect is explained, for failures a test broker cannot easily stage.

The real ones (refused, missing vhost, no permission, wrong password, every TLS case) run on
brokers in tests/rabbitmq/test_connection_errors.py and test_tls.py.
"""

from __future__ import annotations

import socket
import ssl

import aiormq.exceptions as amqp_errors

from eventyard.rabbitmq.connection_problems import HandshakeRefused, connection_error, explain
from eventyard.rabbitmq.settings import settings_from

SETTINGS = settings_from("amqp://svc:Zq%2Fs3cr3tpart@mq.example:5672/prod", environ={})


def test_refused_on_every_address_of_a_host_is_refused() -> None:
    error = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5672, 0, 0), "
                    "[Errno 111] Connect call failed ('127.0.0.1', 5672)")
    problem = explain(error, SETTINGS, "localhost", 5672)
    assert problem.reason == "connection refused: nothing listens there"
    assert "Is the broker running?" in problem.hint


def test_the_cause_behind_the_clients_wrapper_is_what_counts() -> None:
    wrapped = amqp_errors.AMQPConnectionError(-2, "Name or service not known")
    wrapped.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert explain(wrapped, SETTINGS, "mq.example", 5672).reason == "cannot resolve host 'mq.example'"
    assert explain(TimeoutError(), SETTINGS, "mq.example", 5672).reason == "no answer within 10s"


def test_a_refusal_names_the_login_or_the_vhost() -> None:
    login = explain(HandshakeRefused("login", 403, "ACCESS_REFUSED - Login was refused"),
                    SETTINGS, "mq", 5672)
    assert login.reason == "authentication failed for user 'svc'" and "RABBITMQ_PASSWORD" in login.hint
    missing = explain(HandshakeRefused("vhost", 530, "NOT_ALLOWED - vhost prod not found"),
                      SETTINGS, "mq", 5672)
    assert missing.reason == "vhost 'prod' does not exist" and "RABBITMQ_VHOST" in missing.hint
    refused = explain(HandshakeRefused(
        "vhost", 530, "NOT_ALLOWED - access to vhost 'prod' refused for user 'svc'"),
        SETTINGS, "mq", 5672)
    assert refused.reason == "access refused to vhost 'prod' for user 'svc'"
    assert "set_permissions" in refused.hint and "RABBITMQ_VHOST" in refused.hint


def test_tls_failures_are_told_apart() -> None:
    tls = settings_from("amqps://svc:pw@mq/?cafile=/ca.pem", environ={})
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_code, untrusted.verify_message = 19, "self-signed certificate in chain"
    assert "not trusted" in explain(untrusted, tls, "mq", 5671).reason
    wrong_name = ssl.SSLCertVerificationError(1, "certificate verify failed")
    wrong_name.verify_code, wrong_name.verify_message = 62, "Hostname mismatch"
    problem = explain(wrong_name, tls, "mq", 5671)
    assert "is not for 'mq'" in problem.reason and "RABBITMQ_SSL_SERVER_NAME" in problem.hint
    hung_up = explain(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), tls, "mq", 5671)
    assert "wants a client certificate" in hung_up.reason
    assert "RABBITMQ_SSL_CERTFILE" in hung_up.hint


def test_one_error_lists_every_host_and_each_hint_once() -> None:
    problems = [explain(ConnectionRefusedError(), SETTINGS, "mq1", 5672),
                explain(ConnectionRefusedError(), SETTINGS, "mq2", 5672),
                explain(HandshakeRefused("login", 403, "ACCESS_REFUSED"), SETTINGS, "mq3", 5672)]
    message = str(connection_error(SETTINGS, problems))
    assert message.startswith("cannot connect to RabbitMQ at amqp://svc@mq.example:5672/prod: "
                              "mq1:5672: connection refused")
    assert "mq3:5672: authentication failed for user 'svc'" in message
    assert message.count("Is the broker running?") == 1
    assert "s3cr3t" not in message and "Zq" not in message
