"""``eventyard-rabbitmq``: the seed's requeue scenario, its dry run, its flag checks."""

from __future__ import annotations

import pytest

from cli.conftest import LEGACY, Service

pytestmark = pytest.mark.rabbitmq


def test_seed_scenario_requeues_dead_letters_to_a_fixed_consumer(service: Service) -> None:
    ids = service.dead_letter(5)
    assert service.count(service.queue) == 0

    result = service.run(LEGACY, "--requeue", "-o", service.org, "-s", "registration",
                         "-cq", service.dead_letter_queue, "-rttl", "0")

    assert result.returncode == 0, result.stderr
    assert "requeued 5 messages from 1 queue" in result.stdout
    for message_id in ids:
        assert f"requeued {message_id} (user.created) from {service.dead_letter_queue}" in result.stdout
    handled = service.consume(fail=False, until=5)
    assert sorted(handled) == sorted(ids)
    assert service.count(service.dead_letter_queue) == 0
    assert service.count(service.retry_queue) == 0


def test_requeued_message_gets_a_fresh_retry_budget(service: Service) -> None:
    service.dead_letter(1)
    result = service.run(LEGACY, "-rq", "-o", service.org, "-s", "registration",
                         "-cq", service.dead_letter_queue, "-rttl", "0", "-mr", "3", "-wtr", "0")
    assert result.returncode == 0, result.stderr

    # It fails again: max_retries 1 means one retry, then the dead-letter queue once more.
    service.consume(fail=True, until=1)
    (_body, headers, _), = service.inspector.take(service.dead_letter_queue)
    assert headers["failure_attempts"] == 2
    assert headers["requeue_count"] == 1
    assert headers["requeued_from"] == service.dead_letter_queue
    assert headers["previous_failure"]["type"] == "MailServerDown"
    assert headers["failure_routing_key"] == f"{service.org}.registration.1.event.user_created"


def test_dry_run_moves_nothing(service: Service) -> None:
    ids = service.dead_letter(3)

    result = service.run(LEGACY, "--requeue", "--dry-run", "-o", service.org, "-s", "registration",
                         "-cq", service.dead_letter_queue)

    assert result.returncode == 0, result.stderr
    assert "would requeue 3 messages" in result.stdout
    assert service.count(service.retry_queue) == 0
    assert service.count(service.queue) == 0
    assert sorted(service.take_ids(service.dead_letter_queue)) == sorted(ids)


def test_requeue_paces_and_stops_when_the_queue_is_empty(service: Service) -> None:
    service.configure()
    result = service.run(LEGACY, "--requeue", "-o", service.org, "-s", "registration",
                         "-cq", service.dead_letter_queue, "-wtr", "0.1")
    assert result.returncode == 0, result.stderr
    assert "requeued 0 messages from 1 queue" in result.stdout


@pytest.mark.parametrize(("flags", "message"), [
    (["-mr", "many"], "argument -mr/--max-retries: 'many' is not an integer"),
    (["-rttl", "-5"], "argument -rttl/--retry-ttl: '-5' must be >= 0"),
    (["-wtr", "soon"], "argument -wtr/--wait-to-requeue: 'soon' is not a number"),
    (["-cq", "{queue}"], "is not a dead-letter queue"),
    (["-cq", "dead_letter.other.billing.1.event.x.h"], "belongs neither to a service of {org}"),
    (["-cq", "dead_letter.{queue}.nowhere"], "does not exist on amqp://"),
])
def test_bad_flags_exit_2_with_a_message(service: Service, flags: list[str], message: str) -> None:
    service.configure()
    flags = [f.format(queue=service.queue, org=service.org) for f in flags]
    defaults = {"-cq": service.dead_letter_queue}
    for flag, value in defaults.items():
        if flag not in flags:
            flags += [flag, value]

    result = service.run(LEGACY, "--requeue", "-o", service.org, "-s", "registration", *flags)

    assert result.returncode == 2
    assert message.format(org=service.org) in result.stderr
    assert "usage: eventyard-rabbitmq" in result.stderr


def test_requeue_without_its_flags_is_refused(service: Service) -> None:
    nothing = service.run(LEGACY, "-o", service.org)
    missing = service.run(LEGACY, "--requeue", "-cq", service.dead_letter_queue)
    assert nothing.returncode == 2 and "nothing to do: pass --requeue" in nothing.stderr
    assert missing.returncode == 2
    assert "--requeue needs -o/--organization, -s/--service" in missing.stderr


def test_help_shows_the_seed_flags(service: Service) -> None:
    result = service.run(LEGACY, "-h")
    assert result.returncode == 0
    for flag in ("-rq, --requeue", "-cq CONSUMING_QUEUES, --consuming-queues CONSUMING_QUEUES",
                 "-o ORGANIZATION, --organization ORGANIZATION", "-s SERVICE, --service SERVICE",
                 "-mr MAX_RETRIES, --max-retries MAX_RETRIES", "-rttl RETRY_TTL, --retry-ttl RETRY_TTL",
                 "-wtr WAIT_TO_REQUEUE, --wait-to-requeue WAIT_TO_REQUEUE"):
        assert flag in result.stdout
    assert "eventyard-rabbitmq helps us on rabbitmq iteration" in result.stdout


def test_the_seeds_own_command_with_long_flags_and_two_queues(service: Service) -> None:
    import asyncio

    import aiormq

    ids = service.dead_letter(2)
    sms = f"{service.org}.registration.1.event.user_confirmed.send_sms_on_user_confirmed"

    async def declare_second_subscriber() -> None:  # the seed's second queue, empty
        connection = await aiormq.connect(service.url)
        channel = await connection.channel()
        for name in (sms, f"retry.{sms}", f"dead_letter.{sms}"):
            await channel.queue_declare(name, durable=True)
        await connection.close()

    asyncio.run(declare_second_subscriber())
    result = service.run(LEGACY, "--requeue", "--organization", service.org, "--service", "registration",
                         "--consuming-queues", f"dead_letter.{sms},{service.dead_letter_queue}",
                         "--retry-ttl", "0", "--wait-to-requeue", "0")

    assert result.returncode == 0, result.stderr
    assert "requeued 2 messages from 2 queues" in result.stdout
    assert sorted(service.consume(fail=False, until=2)) == sorted(ids)
