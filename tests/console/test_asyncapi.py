"""The AsyncAPI 3.0 document, validated against the official JSON schema (vendored)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from cli import billingapp, cliapp
from cli.conftest import EVENTYARD, ROOT
from eventyard import ConfigurationError
from eventyard.asyncapi import asyncapi_document
from eventyard.rabbitmq.settings import settings_from
from support.vhost import clean_env

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "asyncapi-3.0.0.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def problems(document: dict[str, object]) -> list[str]:
    return [f"{list(e.path)}: {e.message[:200]}" for e in VALIDATOR.iter_errors(document)]


def test_the_document_of_an_application_is_valid_asyncapi_3() -> None:
    settings = settings_from("amqp://alice:s3cret@broker.example:5672/shop")

    document = asyncapi_document("acme", "registration", cliapp.subscribers(), settings=settings)

    assert problems(document) == []
    key = "acme.registration.1.event.user_created"
    assert document["channels"][key]["address"] == key
    assert document["channels"][key]["bindings"]["amqp"]["exchange"]["name"] == "acme.registration"
    (operation,) = document["operations"].values()
    assert operation["action"] == "receive" and "send_mail_handler" in operation["summary"]
    payload = document["components"]["messages"]["user.created.v1"]["payload"]
    data = payload["properties"]["data"]["properties"]
    assert data["type"]["const"] == "user.created" and "user_id" in data["attributes"]["properties"]
    assert document["servers"]["rabbitmq"]["host"] == "broker.example:5672"
    assert "s3cret" not in json.dumps(document)


def test_a_subscriber_of_another_service_listens_on_that_service_channel() -> None:
    document = asyncapi_document("acme", "billing", billingapp.subscribers)

    assert problems(document) == []
    assert list(document["channels"]) == ["acme.registration.1.event.user_created"]


def test_the_validator_rejects_a_broken_document() -> None:
    document = asyncapi_document("acme", "registration", cliapp.subscribers())
    document["operations"]["broken"] = {"action": "listen", "channel": {"$ref": "#/channels/x"}}

    assert problems(document)


def test_a_bad_organisation_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        asyncapi_document("a b", "registration", cliapp.subscribers())


def test_the_command_writes_the_same_document(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.json"

    result = subprocess.run(
        [str(EVENTYARD), "asyncapi", "-o", "acme", "-s", "registration", "--app",
         "cli.cliapp:subscribers", "--output", str(target)],
        env=clean_env(PYTHONPATH=str(ROOT / "tests"), RABBITMQ_URL="amqp://u:pw1@localhost:5672/"),
        capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert result.returncode == 0, result.stderr
    written = json.loads(target.read_text())
    assert problems(written) == []
    assert written == asyncapi_document("acme", "registration", cliapp.subscribers(),
                                        settings=settings_from("amqp://u:pw1@localhost:5672/"))
