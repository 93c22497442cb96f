"""Dead-letter queues found without the application's code: the management API, or a message
saying to give --app/--queue when it is off; full queue names in piped output; --version."""

from __future__ import annotations

import json
import re
from importlib.metadata import version

import pytest

from cli.conftest import EVENTYARD, Service
from eventyard import naming
from eventyard.rabbitmq.management import select_dead_letter_queues
from eventyard.rabbitmq.settings import settings_from
from support.rabbitnode import free_port
from support.tcpproxy import TcpProxy


@pytest.mark.rabbitmq
def test_dlq_list_finds_the_service_queues_through_the_management_api(service: Service) -> None:
    service.dead_letter(2)

    result = service.run(EVENTYARD, "dlq", "list", "-o", service.org, "-s", "registration", "--json")

    assert result.returncode == 0, result.stderr
    (summary,) = json.loads(result.stdout)
    assert summary["queue"] == service.dead_letter_queue and summary["count"] == 2
    assert service.count(service.dead_letter_queue) == 2


@pytest.mark.rabbitmq
def test_piped_tables_wrap_full_queue_names_and_never_cut_them(service: Service) -> None:
    service.dead_letter(1)
    env = {"COLUMNS": "60"}  # narrower than the name: it must wrap

    result = service.run(EVENTYARD, "dlq", "list", "-o", service.org, "-s", "registration", **env)

    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    first_column = "".join(line.split("│")[1].strip() for line in result.stdout.splitlines()
                           if line.startswith("│"))
    assert service.dead_letter_queue in first_column
    assert "1 dead letter in 1 queue" in result.stdout


@pytest.mark.rabbitmq
def test_requeue_and_discard_through_discovery_act_on_the_service_queues(service: Service) -> None:
    first, second = service.dead_letter(2)

    requeued = service.run(EVENTYARD, "dlq", "requeue", "-o", service.org, "-s", "registration",
                           "--id", first, "--json")
    discarded = service.run(EVENTYARD, "dlq", "discard", "-o", service.org, "-s", "registration",
                            "--id", second, "--yes", "--json")

    assert requeued.returncode == 0 and discarded.returncode == 0, requeued.stderr + discarded.stderr
    assert json.loads(requeued.stdout)["counts"]["requeued"] == 1
    assert json.loads(discarded.stdout)["counts"]["discarded"] == 1
    assert service.consume(fail=False, until=1) == [first]
    assert service.count(service.dead_letter_queue) == 0


def test_version_prints_the_installed_version() -> None:
    import subprocess

    result = subprocess.run([str(EVENTYARD), "--version"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0
    assert result.stdout.strip() == f"eventyard {version('eventyard')}"


def test_selection_keeps_the_organisation_and_service_queues_and_their_store() -> None:
    names = ["dead_letter.acme.registration.1.event.user_created.send_mail",
             "dead_letter.acme.billing.1.event.user_created.bill",
             "dead_letter.acmecorp.registration.1.event.user_created.send_mail",
             "dead_letter.store", "acme.registration.1.event.user_created.send_mail", "retry.x"]
    bindings = [{"source": naming.store_dead_letter_exchange("acme"), "destination": "dead_letter.store",
                 "destination_type": "queue"}]

    assert select_dead_letter_queues(names, bindings, "acme", "registration") == [
        "dead_letter.acme.registration.1.event.user_created.send_mail", "dead_letter.store"]
    assert select_dead_letter_queues(names, bindings, "acme") == [
        "dead_letter.acme.billing.1.event.user_created.bill",
        "dead_letter.acme.registration.1.event.user_created.send_mail", "dead_letter.store"]
    assert select_dead_letter_queues(names) == sorted(n for n in names if n.startswith("dead_letter."))


def test_a_broker_off_the_default_port_needs_the_api_address() -> None:
    from eventyard import ManagementApiError
    from eventyard.rabbitmq.management import management_url

    with pytest.raises(ManagementApiError, match="EVENTYARD_MANAGEMENT_URL"):
        management_url(settings_from("amqp://guest:secret@127.0.0.1:25672/"))
    assert management_url(settings_from("amqps://u:p@broker.example/")) == "https://broker.example:15671"


@pytest.mark.rabbitmq
def test_without_the_management_plugin_the_cli_says_to_give_app_or_queue(service: Service) -> None:
    # The test broker behind a port of its own: where its API would be, nothing answers.
    proxy = TcpProxy(service.url)
    try:
        url = proxy.url()
        where = ["dlq", "list", "-o", service.org, "-s", "registration"]
        no_api = service.run(EVENTYARD, *where, RABBITMQ_URL=url,
                             EVENTYARD_MANAGEMENT_URL=f"http://127.0.0.1:{free_port()}")
        off_port = service.run(EVENTYARD, *where, RABBITMQ_URL=url)
        configured = service.run(EVENTYARD, "configure", "cli.cliapp:subscribers", "-o", service.org,
                                 "-s", "registration", "--no-store", RABBITMQ_URL=url)
        with_app = service.run(EVENTYARD, *where, "--app", "cli.cliapp:subscribers", "--no-store",
                               "--json", RABBITMQ_URL=url)
    finally:
        proxy.close()

    assert no_api.returncode == 2 and off_port.returncode == 2
    for result in (no_api, off_port):
        text = re.sub(r"\s+", " ", result.stderr)
        assert "--queue" in text and "--app" in text and "Traceback" not in text
    assert "rabbitmq_management" in re.sub(r"\s+", " ", no_api.stderr)
    assert "guest:guest" not in no_api.stderr + off_port.stderr
    assert configured.returncode == 0, configured.stderr
    assert with_app.returncode == 0, with_app.stderr
    assert [s["queue"] for s in json.loads(with_app.stdout)] == [service.dead_letter_queue]
