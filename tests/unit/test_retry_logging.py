"""A retry is logged at WARNING once a minute per queue, saying how many came since; every other
retry at INFO; a dead letter always at ERROR (docs/observability.md)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from contract.samples import UserCreated
from eventyard import Uuid
from eventyard.outcomes import outcome_of_exception
from eventyard.retry import RetryPolicy
from eventyard.settling import Settler
from eventyard.topology import route_of


class Host:
    options = None
    observed = False
    transport = None

    def notify(self, event: Any) -> None:
        raise AssertionError("no observer: no event is built")

    def track(self, task: Any) -> None:
        pass


def test_retries_warn_once_a_minute_per_queue_and_dead_letters_always_error(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from eventyard import settling
    from eventyard.forwarding import Forwarder

    now = [1000.0]
    monkeypatch.setattr(settling.time, "monotonic", lambda: now[0])
    queue = "acme.registration.1.event.user_created.send_mail"
    host = Host()
    settler = Settler(host, queue, Forwarder(host, queue, route_of("acme", "registration", queue)),
                      RetryPolicy(5), delayed=False, ordered=True)
    message = UserCreated(user_id=Uuid.v4())
    outcome = outcome_of_exception(ConnectionError("smtp down"))
    caplog.set_level(logging.INFO, logger="eventyard.consuming")
    for _ in range(3):
        settler._log_failure(message, outcome, 0, retry=True)
    now[0] += 61
    settler._log_failure(message, outcome, 0, retry=True)
    settler._log_failure(message, outcome, 5, retry=False)
    levels = [(r.levelname, r.getMessage().endswith("since the last warning)")) for r in caplog.records]
    assert levels == [("WARNING", False), ("INFO", False), ("INFO", False), ("WARNING", True),
                      ("ERROR", False)]
    assert "(3 retries on this queue since the last warning)" in caplog.records[3].getMessage()
