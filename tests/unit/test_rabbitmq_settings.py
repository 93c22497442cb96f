"""Connection settings: the seed's environment variables, URLs, and no password in sight."""

from __future__ import annotations

import dataclasses
import random
import re
import ssl
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import yarl

from eventyard import ConfigurationError
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.rabbitmq.settings import ConnectionSettings, settings_from


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


# -- passwords that must never show -------------------------------------------------------------

HOSTILE = [
    "s3cr3t/part", "pa#ss", "what?ever", "p@ss@word", "colon:in:it", "/", "@", "#", "?",
    "a/b?c#d@e:f", "@localhost:5672", "x@evil.example:1234/vhost", "SECRET%2F", "100%",
    "%zz%", "ends-with/", "/starts", "?heartbeat=1", "#fragment@host", "sp ace & amp=eq",
    "comma,host2:5673", "[::1]:5672", "back\\slash", "ünïcödé/パス", "quote'\"`", "a" * 200 + "/@",
]


def _random_hostile(rng: random.Random) -> str:
    """A password of awkward characters; every 4 characters hold an upper-case letter no
    eventyard message uses next to such punctuation, so a leak cannot pass for prose."""
    specials = "/#?@:%&=+;,[]!$*~^|\\ "
    chunks = []
    for _ in range(rng.randint(1, 8)):
        chunks.append("".join(rng.choice(specials) for _ in range(rng.randint(1, 3))))
        chunks.append(rng.choice("QXZJKW"))
    return "".join(chunks)


RANDOM = [_random_hostile(random.Random(seed)) for seed in range(300)]
HOSTILE += RANDOM


def _fragments(secret: str) -> set[str]:
    return {secret[i:i + 4] for i in range(len(secret) - 3)}  # the whole one too, if 4+ long


def _assert_hidden(secret: str, texts: list[str], benign: list[str]) -> None:
    """No 4-character piece of ``secret`` in ``texts`` unless the same text without the
    password (``benign``) has it too: a password like "@localhost:5672" shares pieces with
    a real host and port."""
    if secret in RANDOM:  # made so that no piece of it can pass for anything else
        benign = [""] * len(texts)
    for text, reference in zip(texts, benign, strict=True):
        leaked = sorted(f for f in _fragments(secret) if f in text and f not in reference)
        assert not leaked, f"{leaked!r} of the password shows in {text!r}"


def _shown(settings: ConnectionSettings) -> list[str]:
    return [settings.describe(), repr(settings), repr(RabbitMqConnector(settings=settings))]


def _refusal(url: str) -> str:
    with pytest.raises(ConfigurationError) as raised:
        settings_from(url, environ={})
    return str(raised.value)


@pytest.mark.parametrize("secret", HOSTILE)
def test_a_raw_password_in_a_url_is_read_exactly_or_refused_without_a_trace(secret: str) -> None:
    url = f"amqp://svc:{secret}@mq1.example:5673,mq2.example:5673/prod"
    try:
        settings = settings_from(url, environ={})
    except ConfigurationError as error:
        # The same words whatever the password: nothing of it can be in them.
        refusal = _refusal("amqp://svc:a/b@mq1.example/prod")
        assert str(error) == refusal and "percent-encode" in refusal
        _assert_hidden(secret, [str(error)], [refusal])
    else:
        # Read one way only: then exactly as written, and nothing of it elsewhere.
        assert (settings.user, settings.password) == ("svc", unquote(secret))
        assert settings.hosts == ("mq1.example", "mq2.example") and settings.port == 5673
        assert settings.vhost == "prod"
        benign = _shown(dataclasses.replace(settings, password="pw"))
        assert _shown(settings) == benign
        _assert_hidden(secret, _shown(settings), benign)


@pytest.mark.parametrize("secret", HOSTILE)
def test_a_percent_encoded_password_always_works(secret: str) -> None:
    url = f"amqps://svc:{quote(secret, safe='')}@mq.example/prod?heartbeat=5"
    settings = settings_from(url, environ={})
    assert settings.password == secret and settings.vhost == "prod" and settings.port == 5671
    assert settings.describe() == "amqps://svc@mq.example:5671/prod"
    benign = _shown(dataclasses.replace(settings, password="pw"))
    assert _shown(settings) == benign
    _assert_hidden(secret, _shown(settings), benign)
    # aiormq reads the URL eventyard builds with yarl: it must read the same password.
    assert yarl.URL(settings.url()).password == secret


@pytest.mark.parametrize("secret", HOSTILE)
def test_rabbitmq_password_needs_no_encoding(secret: str) -> None:
    for url in (None, "amqp://svc@mq.example/prod"):  # a URL without a password takes it too
        settings = settings_from(url, environ={"RABBITMQ_USER": "svc", "RABBITMQ_PASSWORD": secret})
        assert settings.password == secret
        assert yarl.URL(settings.url()).password == secret
        benign = _shown(dataclasses.replace(settings, password="pw"))
        assert _shown(settings) == benign
        _assert_hidden(secret, _shown(settings), benign)


@pytest.mark.parametrize("url", [
    "amqp://u:pa/ss@host/vh", "amqp://u:pa?ss@host/", "amqp://u:pa#ss@host/", "amqp://host/v@h",
    "amqp://u:s3cr3tpart/x@host:5672/",
])
def test_an_ambiguous_url_is_refused_with_the_fix_and_no_part_of_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="percent-encoded") as raised:
        settings_from(url, environ={})
    assert "quote(password, safe='')" in str(raised.value)
    for piece in ("pa", "ss", "s3cr3t", "part", "v@h"):
        assert f"'{piece}" not in str(raised.value) and f"{piece}'" not in str(raised.value)


def test_a_bad_port_is_named_without_quoting_the_url() -> None:
    with pytest.raises(ConfigurationError, match="port of RabbitMQ host 'mq' must be a number") as raised:
        settings_from("amqp://u:p@mq:s3cr3tpart/", environ={})
    assert "s3cr3tpart" not in str(raised.value)


def test_a_url_without_a_scheme_is_not_quoted() -> None:
    with pytest.raises(ConfigurationError, match=r"amqp:// or amqps://$") as raised:
        settings_from("guest:hunter22@localhost", environ={})
    assert "hunter22" not in str(raised.value)


# -- hosts ----------------------------------------------------------------------------------------

def test_each_host_may_have_its_own_port() -> None:
    settings = settings_from("amqp://u:p@h1:5672,h2:5673,h3/", environ={})
    assert settings.endpoints == (("h1", 5672), ("h2", 5673), ("h3", 5672))
    assert settings.describe() == "amqp://u@h1:5672,h2:5673,h3:5672/"
    from_env = settings_from(environ={"RABBITMQ_HOST": "h1:5672,h2:5673,h3", "RABBITMQ_PORT": "5674"})
    assert from_env.endpoints == (("h1", 5672), ("h2", 5673), ("h3", 5674))
    assert from_env.url("h2:5673").startswith("amqp://guest:guest@h2:5673/")


def test_an_ipv6_host_is_written_in_brackets() -> None:
    settings = settings_from("amqp://u:p@[::1]:5673/", environ={})
    assert settings.endpoints == (("::1", 5673),)
    assert settings.url().startswith("amqp://u:p@[::1]:5673/")
    with pytest.raises(ConfigurationError, match="brackets"):
        settings_from(environ={"RABBITMQ_HOST": "::1"})


# -- TLS ------------------------------------------------------------------------------------------

def test_tls_settings_come_from_the_url_query() -> None:
    settings = settings_from(
        "amqps://u:p@mq/?cafile=/etc/ca.pem&certfile=/etc/c.pem&keyfile=/etc/c%2Bk.key"
        "&verify=verify_peer&server_name_indication=rabbit.internal", environ={})
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        "/etc/ca.pem", "/etc/c.pem", "/etc/c+k.key")
    assert settings.tls_verify and settings.tls_check_hostname
    assert settings.server_name("mq") == "rabbit.internal"
    rabbit_names = settings_from("amqps://u:p@mq/?cacertfile=/ca.pem&verify=verify_none"
                                 "&server_name_indication=disable", environ={})
    assert rabbit_names.tls_ca_file == "/ca.pem" and not rabbit_names.tls_verify
    assert not rabbit_names.tls_check_hostname and rabbit_names.server_name("mq") == "mq"


def test_tls_settings_come_from_the_variables() -> None:
    env = {"RABBITMQ_SSL": "true", "RABBITMQ_HOST": "mq", "RABBITMQ_SSL_CAFILE": "/ca.pem",
           "RABBITMQ_SSL_CERTFILE": "/c.pem", "RABBITMQ_SSL_KEYFILE": "/c.key",
           "RABBITMQ_SSL_VERIFY": "true", "RABBITMQ_SSL_SERVER_NAME": "rabbit.internal"}
    settings = settings_from(environ=env)
    assert settings.tls and settings.port == 5671
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        "/ca.pem", "/c.pem", "/c.key")
    assert settings.server_name("mq") == "rabbit.internal"
    # An amqps:// URL takes the files from the variables; its own query wins.
    with_url = settings_from("amqps://u:p@mq/?cafile=/url-ca.pem", environ=env)
    assert (with_url.tls_ca_file, with_url.tls_cert_file) == ("/url-ca.pem", "/c.pem")


@pytest.mark.parametrize(("url", "env", "message"), [
    ("amqp://u:p@mq/?cafile=/ca.pem", {}, "cafile in an amqp:// URL"),
    ("amqp://u:p@mq/", {"RABBITMQ_SSL_CAFILE": "/ca.pem"}, "RABBITMQ_SSL_CAFILE set, but the AMQP URL is amqp://"),
    (None, {"RABBITMQ_SSL_CERTFILE": "/c.pem"}, "does not use TLS"),
    ("amqps://u:p@mq/?keyfile=/c.key", {}, "needs its certificate"),
    ("amqps://u:p@mq/?verify=maybe", {}, "verify in the AMQP URL must be one of"),
    (None, {"RABBITMQ_SSL": "sometimes"}, "RABBITMQ_SSL must be one of"),
    ("amqps://u:p@mq/?cafile=/a&cafile=/b", {}, "given twice"),
    ("amqps://u:p@mq/?ca_file=/ca.pem", {}, "unknown parameter 'ca_file' in the AMQP URL; known: heartbeat"),
    ("amqps://u:p@mq/?heartbeat", {}, "name=value pairs"),
])
def test_misplaced_or_unknown_tls_settings_are_errors(url: str | None, env: dict[str, str],
                                                      message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        settings_from(url, environ=env)


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    settings = settings_from(f"amqps://u:p@mq/?cafile={tmp_path}/missing.pem", environ={})
    with pytest.raises(ConfigurationError, match=r"cannot load the TLS CA file .*missing\.pem"):
        settings.ssl_context()
    (tmp_path / "junk.pem").write_text("not a certificate")
    settings = settings_from(f"amqps://u:p@mq/?certfile={tmp_path}/junk.pem", environ={})
    with pytest.raises(ConfigurationError, match=r"cannot load the TLS client certificate .*junk\.pem"):
        settings.ssl_context()


def test_verification_can_be_relaxed() -> None:
    settings = settings_from("amqps://u:p@mq/?verify=verify_none", environ={})
    context = settings.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    no_name = settings_from("amqps://u:p@mq/?server_name_indication=disable", environ={})
    context = no_name.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert not context.check_hostname
    assert settings_from("amqp://u:p@mq/", environ={}).ssl_context() is None


# -- timeouts -------------------------------------------------------------------------------------

def test_timeouts_come_from_the_url_the_variables_or_arguments() -> None:
    assert settings_from(environ={}).publish_timeout == 30.0
    from_url = settings_from("amqp://mq/?publish_timeout=2.5&connect_timeout=4", environ={})
    assert (from_url.publish_timeout, from_url.connect_timeout) == (2.5, 4.0)
    env = {"RABBITMQ_PUBLISH_TIMEOUT": "7", "RABBITMQ_CONNECT_TIMEOUT": "3"}
    from_env = settings_from(environ=env)
    assert (from_env.publish_timeout, from_env.connect_timeout) == (7.0, 3.0)
    assert settings_from("amqp://mq/", environ=env).publish_timeout == 7.0  # the URL leaves it out
    assert settings_from(environ=env, publish_timeout=1).publish_timeout == 1
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(ConfigurationError, match="RABBITMQ_PUBLISH_TIMEOUT must be a number of seconds"):
            settings_from(environ={"RABBITMQ_PUBLISH_TIMEOUT": bad})
