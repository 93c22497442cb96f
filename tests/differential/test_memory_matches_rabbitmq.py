"""The in-memory broker does what RabbitMQ does: every scenario, run on both, observed alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from differential.conftest import Scenario
from differential.scenarios import SCENARIOS


@pytest.mark.rabbitmq
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_memory_matches_rabbitmq(scenario: Scenario,
                                 compare: Callable[[Scenario], tuple[Any, Any]]) -> None:
    on_rabbitmq, on_memory = compare(scenario)
    assert on_memory == on_rabbitmq
