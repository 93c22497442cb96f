"""Connection settings: the seed's environment variables, URLs, and no password in sight."""

from __future__ import annotations

import pytest

from eventyard import ConfigurationError
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.rabbitmq.settings import settings_from


def test_defaults_are_the_local_guest_broker() -> None:
    settings = settings_from(environ={})
    assert (settings.hosts, settings.port, settings.user, settings.password, settings.vhost) == (
        ("localhost",), 5672, "guest", "guest", "/")


def test_the_seed_variables_are_read() -> None:
    settings = settings_from(environ={
        "RABBITMQ_HOST": "mq1,mq2", "RABBITMQ_PORT": "5673", "RABBITMQ_USER": "svc",
        "RABBITMQ_PASSWORD": "s3cret!", "RABBITMQ_VHOST": "prod", "RABBITMQ_HEARTBEAT": "30",
        "RABBITMQ_PREFETCH_COUNT": "50"})
    assert settings.hosts == ("mq1", "mq2")
    assert (settings.port, settings.user, settings.vhost) == (5673, "svc", "prod")
    assert (settings.heartbeat, settings.prefetch_count) == (30, 50)
    assert settings.url("mq2") == "amqp://svc:s3cret%21@mq2:5673/prod?heartbeat=30&name=eventyard"


def test_an_explicit_url_wins_over_the_variables() -> None:
    settings = settings_from("amqps://app:pw@broker.example:5671/%2Fteam",
                             environ={"RABBITMQ_HOST": "ignored", "RABBITMQ_PORT": "1"})
    assert settings.tls and settings.hosts == ("broker.example",) and settings.port == 5671
    assert (settings.user, settings.password, settings.vhost) == ("app", "pw", "/team")


def test_a_bad_number_is_named() -> None:
    with pytest.raises(ConfigurationError, match="RABBITMQ_PORT must be an integer"):
        settings_from(environ={"RABBITMQ_PORT": "fifty"})


def test_a_url_must_be_amqp() -> None:
    with pytest.raises(ConfigurationError, match="amqp:// or amqps://"):
        settings_from("http://localhost")


def test_the_password_never_shows() -> None:
    connector = RabbitMqConnector(environ={"RABBITMQ_PASSWORD": "hunter22"})
    assert "hunter22" not in repr(connector)
    assert "hunter22" not in repr(connector.settings)
    assert "hunter22" not in connector.settings.describe()
