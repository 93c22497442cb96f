"""Chaos policy: simulated nacks, delays and handler failures (pure and seedable).

Chaos exists to prove the delivery guarantees: a run with chaos on must end with every message
handled or dead-lettered. Routing keys or queues listed as protected never see chaos.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eventyard.errors import ChaosConfigurationError

ENV_NACK = "EVENT_CHAOS_PERCENTAGE_SIMULATE_NACK"
ENV_DELAY = "EVENT_CHAOS_DELAY_BEFORE_EVENT_HANDLER_SECONDS"
ENV_FAILURES = "EVENT_CHAOS_PERCENTAGE_SIMULATE_FAILURES"
ENV_PROTECTED = "EVENT_CHAOS_PROTECTED_ROUTING_KEYS"
ENV_SEED = "EVENT_CHAOS_SEED"


@dataclass(frozen=True, slots=True)
class ChaosAction:
    """What chaos does to one delivery."""

    nack: bool = False
    delay_seconds: float = 0.0
    fail: bool = False


NO_CHAOS = ChaosAction()


class SimulatedChaosFailure(Exception):
    """The handler failure chaos pretends happened."""


def _fraction(value: float | str | None, name: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ChaosConfigurationError(f"{name} must be a number between 0.0 and 1.0, not {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ChaosConfigurationError(f"{name} must be between 0.0 and 1.0, not {number}")
    return number


def _seconds(value: float | str | None, name: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ChaosConfigurationError(f"{name} must be a number of seconds, not {value!r}") from None
    if number < 0:
        raise ChaosConfigurationError(f"{name} must be >= 0 seconds, not {number}")
    return number


class EventChaos:
    """Decides, per delivery, whether to simulate a nack, a delay or a handler failure.

    Each setting comes from its argument or else from its ``EVENT_CHAOS_*`` environment
    variable; with neither, chaos is off. ``seed`` makes a run reproducible.
    """

    def __init__(
        self,
        percentage_simulate_nack: float | None = None,
        delay_before_even_handler_second: float | None = None,
        percentage_simulate_failures: float | None = None,
        protected_routing_keys: Iterable[str] | None = None,
        *,
        seed: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.percentage_simulate_nack = _fraction(
            percentage_simulate_nack if percentage_simulate_nack is not None else env.get(ENV_NACK),
            "percentage_simulate_nack" if percentage_simulate_nack is not None else ENV_NACK)
        self.delay_before_even_handler_second = _seconds(
            delay_before_even_handler_second if delay_before_even_handler_second is not None
            else env.get(ENV_DELAY),
            "delay_before_even_handler_second" if delay_before_even_handler_second is not None
            else ENV_DELAY)
        self.percentage_simulate_failures = _fraction(
            percentage_simulate_failures if percentage_simulate_failures is not None
            else env.get(ENV_FAILURES),
            "percentage_simulate_failures" if percentage_simulate_failures is not None
            else ENV_FAILURES)
        if protected_routing_keys is None:
            raw = env.get(ENV_PROTECTED, "")
            protected_routing_keys = [key.strip() for key in raw.split(",") if key.strip()]
        elif isinstance(protected_routing_keys, str):
            raise ChaosConfigurationError("protected_routing_keys must be a list of strings")
        self.protected_routing_keys = frozenset(protected_routing_keys)
        if seed is None and env.get(ENV_SEED):
            try:
                seed = int(env[ENV_SEED])
            except ValueError:
                raise ChaosConfigurationError(f"{ENV_SEED} must be an integer") from None
        self._random = random.Random(seed)

    def is_active(self) -> bool:
        """True when any setting can change a delivery."""
        return bool(self.percentage_simulate_nack or self.delay_before_even_handler_second
                    or self.percentage_simulate_failures)

    def is_protected(self, routing_key: str, queue: str) -> bool:
        """True when chaos must leave this delivery alone."""
        return routing_key in self.protected_routing_keys or queue in self.protected_routing_keys

    def decide(self, routing_key: str, queue: str) -> ChaosAction:
        """The chaos to apply to one delivery."""
        if not self.is_active() or self.is_protected(routing_key, queue):
            return NO_CHAOS
        if self.percentage_simulate_nack and self._random.random() < self.percentage_simulate_nack:
            return ChaosAction(nack=True)
        fail = bool(self.percentage_simulate_failures) and (
            self._random.random() < self.percentage_simulate_failures)
        return ChaosAction(delay_seconds=self.delay_before_even_handler_second, fail=fail)
