"""The switch and the version list of the fast paths, and the canary for an untested aiormq.

The fast paths (``eventyard.rabbitmq.fastpaths``) use aiormq's internals: they run only on
the aiormq versions listed as tested, unless ``EVENTYARD_AMQP_FAST_PATHS=0`` turns them off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tomllib
from pathlib import Path

import aiormq.connection
import pytest

from eventyard.errors import ConfigurationError
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.framing import BrokerAlarm, FrameStream

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_canary_the_installed_aiormq_is_one_the_fast_paths_were_tested_with() -> None:
    """Fails on an aiormq not listed in ``TESTED_AIORMQ`` unless the fast paths are off: the
    suite then says so instead of running slower without a word."""
    if os.environ.get(fastpaths.SWITCH, "").strip() == "0":
        assert not fastpaths.active()
        return
    assert fastpaths.AIORMQ in fastpaths.TESTED_AIORMQ, (
        f"aiormq {fastpaths.AIORMQ} is installed, but the fast paths were tested only with "
        f"{', '.join(fastpaths.TESTED_AIORMQ)}. Run the suite with {fastpaths.SWITCH}=0 (the "
        "public path), and with the fast paths on; if both pass, add the version to "
        "TESTED_AIORMQ and to the range in pyproject.toml.")
    assert fastpaths.active()


def _bounds(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"aiormq>=([\d.]+),<([\d.]+)", requirement)
    assert match, f"expected aiormq>=X,<Y in pyproject.toml, got {requirement!r}"
    return match[1], match[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_aiormq_range_of_pyproject_is_the_tested_one() -> None:
    """It starts at the oldest tested version and ends before the next minor release."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    ranges = {r for extra in extras.values() for r in extra if r.startswith("aiormq")}
    assert len(ranges) == 1, ranges
    low, high = _bounds(ranges.pop())
    tested = sorted(fastpaths.TESTED_AIORMQ, key=_version)
    assert low == tested[0]
    assert all(_version(low) <= _version(v) < _version(high) for v in tested)
    assert _version(high)[:2] == (_version(tested[-1])[0], _version(tested[-1])[1] + 1)


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_the_switch_turns_them_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(fastpaths.SWITCH, value)
    assert not fastpaths.active()


@pytest.mark.parametrize("value", ["", "1", "true", "on"])
def test_unset_or_on_they_run_on_a_tested_aiormq(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(fastpaths.SWITCH, value)
    monkeypatch.setattr(fastpaths, "AIORMQ", fastpaths.TESTED_AIORMQ[0])
    assert fastpaths.active()


def test_a_value_that_is_neither_on_nor_off_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fastpaths.SWITCH, "fast")
    with pytest.raises(ConfigurationError, match="EVENTYARD_AMQP_FAST_PATHS='fast': use 0"):
        fastpaths.active()


def test_an_untested_aiormq_gets_the_public_path_and_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(fastpaths.SWITCH, raising=False)
    monkeypatch.setattr(fastpaths, "AIORMQ", "99.0.0")
    monkeypatch.setattr(fastpaths, "_warned", [])
    with caplog.at_level(logging.WARNING, logger=fastpaths.__name__):
        assert not fastpaths.active()
        assert not fastpaths.active()
    [record] = caplog.records
    assert "aiormq 99.0.0 is not among the versions" in record.getMessage()


def test_only_a_fast_frame_stream_gets_the_buffered_frame_reader() -> None:
    """Other aiormq connections in the process, and eventyard's on the public path, keep
    aiormq's own reader."""
    async def readers() -> list[type]:
        plain = asyncio.StreamReader()
        return [type(fastpaths.frame_receiver(reader)) for reader in (
            plain, FrameStream(plain, BrokerAlarm(), fast=False),
            FrameStream(plain, BrokerAlarm(), fast=True))]
    aiormq_reader = aiormq.connection.FrameReceiver
    if aiormq_reader is fastpaths.frame_receiver:  # installed by an earlier connection
        aiormq_reader = fastpaths._AIORMQ_RECEIVER
    plain, public, fast = asyncio.run(readers())
    assert plain is aiormq_reader and public is aiormq_reader
    assert fast is not aiormq_reader and issubclass(fast, aiormq_reader)
