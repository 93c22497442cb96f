"""The differential suite: each scenario runs on RabbitMQ and on the in-memory broker, with the
same application code, and the test compares what each broker made of it.

A new behaviour of eventyard lands with its scenario in ``scenarios.py``: a function taking a
``World`` and returning what it observed (handler runs and their order, queue contents,
headers, errors). The test normalises ids and times (``observe.py``), nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from differential.observe import normalised
from differential.world import MemorySide, RabbitSide, World
from support.broker import RabbitBroker
from support.vhost import own_vhost

Scenario = Callable[[World], Any]


def play(scenario: Scenario, world: World) -> Any:
    """Run ``scenario`` in ``world`` and return its observation, normalised."""
    try:
        observed = scenario(world)
    except BaseException as error:
        error.add_note(f"(scenario {scenario.__name__} on {world.name})")
        raise
    finally:
        world.close()
    return normalised(observed)


@contextlib.contextmanager
def broker_for(rabbit: RabbitBroker, scenario: Scenario) -> Iterator[RabbitBroker]:
    """The test broker, or a vhost of the scenario's own when it needs the default names."""
    if getattr(scenario, "own_vhost", False):
        with own_vhost(rabbit) as vhost:
            yield vhost
    else:
        yield rabbit


@pytest.fixture
def compare(rabbit: RabbitBroker, org: str) -> Callable[[Scenario], tuple[Any, Any]]:
    """Run a scenario on both brokers: (what RabbitMQ did, what the memory broker did)."""

    def run(scenario: Scenario) -> tuple[Any, Any]:
        with broker_for(rabbit, scenario) as broker:
            on_rabbit = play(scenario, World(RabbitSide(broker, org)))
        on_memory = play(scenario, World(MemorySide(org)))
        return on_rabbit, on_memory

    return run
