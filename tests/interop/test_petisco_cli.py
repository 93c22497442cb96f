"""``eventyard-rabbitmq`` against petisco 2.2.3's ``petisco-rabbitmq``: which flags carry over."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from petisco.cli import petisco_rabbitmq

from eventyard.cli.legacy import build_parser


def petisco_args(monkeypatch: pytest.MonkeyPatch, *argv: str) -> Any:
    monkeypatch.setattr(sys, "argv", ["petisco-rabbitmq", *argv])
    return petisco_rabbitmq.get_args()


@pytest.mark.parametrize("long", [False, True])
def test_petiscos_requeue_flags_mean_the_same(monkeypatch: pytest.MonkeyPatch, long: bool) -> None:
    flags = (["--requeue", "--organization", "acme", "--service", "registration",
              "--consuming-queue", "dead_letter.q", "--max-retries", "3", "--retry-ttl", "1000",
              "--wait-to-requeue", "2"] if long else
             ["-rq", "-o", "acme", "-s", "registration", "-cq", "dead_letter.q", "-mr", "3",
              "-rttl", "1000", "-wtr", "2"])
    theirs = petisco_args(monkeypatch, *flags)
    ours = build_parser().parse_args(flags)  # petisco's --consuming-queue: ours abbreviated
    assert (ours.requeue, ours.organization, ours.service, ours.consuming_queues) == (
        theirs.requeue, theirs.organization, theirs.service, [theirs.consuming_queue])
    assert (ours.max_retries, ours.retry_ttl, ours.wait_to_requeue) == (
        int(theirs.max_retries), int(theirs.retry_ttl), float(theirs.wait_to_requeue))


@pytest.mark.parametrize(("flag", "dest"), [
    ("-rrk", "retry_routing_key"), ("--retry-routing-key", "retry_routing_key"),
    ("-ren", "retry_exchange_name"), ("--retry-exchange-name", "retry_exchange_name")])
def test_petiscos_retry_route_flags_are_not_taken(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 flag: str, dest: str) -> None:
    """petisco needs the retry routing key (and exchange); eventyard derives both from the queue."""
    flags = ["-rq", "-o", "acme", "-s", "registration", "-cq", "dead_letter.q", flag, "retry.q"]
    assert getattr(petisco_args(monkeypatch, *flags), dest) == "retry.q"
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(flags)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
