"""Log lines: one per outcome, with its fields; the JSON formatter; nothing set up on import."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from contract.conftest import Yard
from eventyard import ConfigurationError, DomainEvent, MessageSubscriber
from eventyard.observability import JsonFormatter, configure_logging

FIELDS = ("queue", "message_name", "message_id", "correlation_id", "attempt")


class Arrived(DomainEvent):
    n: int


class Refused(DomainEvent):
    n: int


def on_arrived(event: Arrived) -> None:
    return None


def on_refused(event: Refused) -> None:
    raise ValueError(f"cannot take {event.n}")


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("eventyard.consuming")]


def test_each_outcome_is_one_line_with_queue_name_id_correlation_and_attempt(
        yard: Yard, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="eventyard")
    subscribers = [MessageSubscriber.from_message(Arrived, [on_arrived]),
                   MessageSubscriber.from_message(Refused, [on_refused])]
    yard.configure(subscribers)
    consumer = yard.consumer(subscribers, max_retries=1)
    arrived, refused = Arrived(n=1), Refused(n=2)
    yard.event_bus().publish([arrived, refused])
    yard.publish_raw(f"{yard.organization}.{yard.service}.1.event.arrived", b"{not json")
    yard.wait_until(lambda: len(yard.recorder.events("dead_lettered")) == 1
                    and len(yard.recorder.events("poison")) == 1, what="both dead letters")
    consumer.stop()

    records = _lines(caplog)
    by_outcome = {getattr(r, "outcome", None): r for r in records}
    handled, retried = by_outcome["handled"], by_outcome["retried"]
    dead, poison = by_outcome["dead_lettered"], by_outcome["poison"]
    assert [r.levelno for r in (handled, retried, dead, poison)] == [
        logging.DEBUG, logging.WARNING, logging.ERROR, logging.ERROR]
    assert (handled.queue, handled.message_name, handled.message_id, handled.correlation_id,
            handled.attempt) == (yard.queue_of(Arrived, on_arrived), "arrived",
                                 arrived.get_message_id(), arrived.get_message_id(), 1)
    refused_queue = yard.queue_of(Refused, on_refused)
    assert (retried.queue, retried.message_id, retried.attempt) == (
        refused_queue, refused.get_message_id(), 1)
    assert (dead.queue, dead.message_id, dead.attempt) == (refused_queue, refused.get_message_id(), 2)
    for record in (retried, dead):
        assert record.error_type == "ValueError" and record.error == "cannot take 2"
        assert "ValueError: cannot take 2" in record.getMessage()
        assert refused.get_message_id() in record.getMessage()
        assert f"correlation {refused.get_message_id()}" in record.getMessage()
    assert "retrying in 200 ms" in retried.getMessage() or "retry queue's delay" in retried.getMessage()
    assert "dead-lettering" in dead.getMessage()
    assert poison.queue == yard.queue_of(Arrived, on_arrived)
    assert poison.error_type == "MessageDecodeError" and "not JSON" in poison.getMessage()
    assert all(hasattr(record, field) for record in records if hasattr(record, "outcome")
               for field in FIELDS)
    # One line per outcome: no traceback under any of them.
    assert all(r.exc_info is None for r in (handled, retried, dead, poison))
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any(m.startswith("consuming 2 queue(s) of") for m in infos)
    assert any(m.startswith("stopped consuming 2 queue(s) of") for m in infos)


def test_a_handled_message_costs_no_line_above_debug(memory_yard: Yard,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eventyard")
    subscribers = [MessageSubscriber.from_message(Arrived, [on_arrived])]
    memory_yard.configure(subscribers)
    memory_yard.consumer(subscribers)
    memory_yard.event_bus().publish(Arrived(n=1))
    memory_yard.wait_until(lambda: len(memory_yard.recorder.events("handled")) == 1)

    assert [r for r in _lines(caplog) if getattr(r, "outcome", None)] == []


def test_the_json_formatter_writes_one_object_per_line_with_the_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("eventyard.test_json")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise KeyError("multi\nline")
        except KeyError:
            log.error("failed %s", "here", exc_info=True,
                      extra={"queue": "q", "message_id": "m1", "attempt": 3, "odd": object()})
        log.warning("plain")
    finally:
        log.removeHandler(handler)
        log.propagate = True

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "failed here" and first["level"] == "ERROR"
    assert (first["queue"], first["message_id"], first["attempt"]) == ("q", "m1", 3)
    assert "KeyError" in first["exception"] and first["odd"].startswith("<object")
    assert first["logger"] == "eventyard.test_json" and first["time"].endswith("+00:00")
    assert second == {"time": second["time"], "level": "WARNING", "logger": "eventyard.test_json",
                      "message": "plain"}


def test_configure_logging_sets_eventyard_s_level_and_leaves_others_at_warning() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("eventyard").level)
    stream = io.StringIO()
    try:
        configure_logging("debug", json_lines=True, stream=stream)
        logging.getLogger("eventyard.anything").debug("shown", extra={"queue": "q"})
        logging.getLogger("aiormq.connection").info("hidden")
        logging.getLogger("aiormq.connection").warning("shown too")
        with pytest.raises(ConfigurationError, match="log level 'loud' is not one of"):
            configure_logging("loud")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("eventyard").setLevel(saved[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("eventyard.anything", "shown"), ("aiormq.connection", "shown too")]
    assert lines[0]["queue"] == "q"


def test_importing_eventyard_configures_no_logging() -> None:
    script = ("import logging, eventyard, eventyard.observability, eventyard.rabbitmq, "
              "eventyard.memory\n"
              "loggers = [logging.getLogger(), logging.getLogger('eventyard')]\n"
              "print([(len(l.handlers), l.level) for l in loggers])")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == f"[(0, {logging.WARNING}), (0, {logging.NOTSET})]"
