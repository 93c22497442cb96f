"""The suite run by pytest-xdist (``make test`` does): the order that keeps an expensive
fixture in one worker, and the end-of-session leftover check made once, by the controller,
after every worker has ended.

``make test`` uses ``--dist worksteal``: each worker is first given an equal run of the
collected tests, in order, and an idle worker then takes the second half of what a busy one
has not started. The tests of the worker's own RabbitMQ node (``worker_node``, a session
fixture that boots one: restarts, alarms, TLS) are put first, so they are the head of one
worker's run and share one node. (``--dist loadgroup``
with ``xdist_group`` markers would say so outright, but pytest-xdist 3.8 sets a node id
attribute that pytest 9.2 no longer reads: the groups are ignored.)

Each worker lists what the broker holds before its first test and sends that, with the names
it made up, to the controller at its end; the controller then compares the broker with what
every worker saw at its start (see ``leftovers.common``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from support.broker import configured_url, inspector_for
from support.leftovers import Holdings, common, from_wire, holdings, left_behind, to_wire, wait_for_clean

# tests using these fixtures go first, so that one worker runs them all, one after the other
FIRST = frozenset({"worker_node"})
KEY = "eventyard_leftovers"


def is_worker(config: pytest.Config) -> bool:
    """True in an xdist worker."""
    return hasattr(config, "workerinput")


def forget_terminal_size() -> None:
    """In an xdist worker, drop the ``COLUMNS`` and ``LINES`` the worker is started with (80
    by 24, whatever the terminal): the CLI's rich consoles would keep that width for good, and
    the CLI tests set the width they want in the environment of each call."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)


def order(items: list[pytest.Item]) -> None:
    """Put the tests of the fixtures in ``FIRST`` first, in their order (see the module doc)."""
    items.sort(key=lambda item: FIRST.isdisjoint(getattr(item, "fixturenames", ())))


def encodable(value: Any) -> Any:
    """``value`` (a report as xdist sends it) with every string UTF-8 encodable: hostile-input
    tests log lone surrogates, which the channel to the controller refuses (the worker dies)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encodable(item) for item in value)
    return value


def send(config: pytest.Config, before: Holdings, issued: frozenset[str]) -> None:
    """In a worker: hand what the broker held at its start, and its names, to the controller."""
    config.workeroutput[KEY] = {"before": to_wire(before), "issued": sorted(issued)}  # type: ignore[attr-defined]


class LeftoverCheck:
    """In the controller: the workers' reports, and what the broker still holds of them."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.found: list[str] = []

    def receive(self, node: Any) -> None:
        """Keep the report of a worker that has ended (``pytest_testnodedown``)."""
        sent = getattr(node, "workeroutput", {}).get(KEY)
        if sent:
            self.reports.append(sent)

    def check(self) -> list[str]:
        """Compare the broker now with what it held before any worker's first test."""
        if not self.reports:
            return []
        inspector = inspector_for(configured_url())
        vhost = inspector.vhost
        dedicated = frozenset() if vhost == "/" else frozenset({vhost})
        before = common(from_wire(report["before"]) for report in self.reports)
        tokens = frozenset(name for report in self.reports for name in report["issued"])
        self.found = wait_for_clean(
            lambda: left_behind(before, holdings(inspector, {vhost, "/"}), tokens, dedicated))
        return self.found
