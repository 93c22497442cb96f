"""Chaos policy: simulated nacks, delays, handler failures and connection drops (pure, seedable).

Chaos exists to prove the delivery guarantees: a run with chaos on must end with every message
handled or dead-lettered. Routing keys or queues listed as protected never see chaos, retries of
their messages included. ``ConnectionDrops`` says when a soak cuts the consumer's connection.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eventyard.errors import ChaosConfigurationError
from eventyard.errors import SimulatedChaosFailure as SimulatedChaosFailure  # its old home
from eventyard.retry import FAILURE_ROUTING_KEY

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

    def is_protected(self, routing_key: str, queue: str,
                     headers: Mapping[str, Any] | None = None) -> bool:
        """True when chaos must leave this delivery alone.

        A retried message arrives with routing key ``retry.Q``; its ``failure_routing_key``
        header still names the key it was published with, so protection follows it.
        """
        protected = self.protected_routing_keys
        if routing_key in protected or queue in protected:
            return True
        original = headers.get(FAILURE_ROUTING_KEY) if headers else None
        if isinstance(original, bytes):
            original = original.decode(errors="replace")
        return isinstance(original, str) and original in protected

    def decide(self, routing_key: str, queue: str,
               headers: Mapping[str, Any] | None = None) -> ChaosAction:
        """The chaos to apply to one delivery."""
        if not self.is_active() or self.is_protected(routing_key, queue, headers):
            return NO_CHAOS
        if self.percentage_simulate_nack and self._random.random() < self.percentage_simulate_nack:
            return ChaosAction(nack=True)
        fail = bool(self.percentage_simulate_failures) and (
            self._random.random() < self.percentage_simulate_failures)
        return ChaosAction(delay_seconds=self.delay_before_even_handler_second, fail=fail)


class ConnectionDrops:
    """When a soak drops the consumer's connection: ``count`` times over ``total`` deliveries.

    The drops are spread evenly with a seeded jitter, never at the very start or end, so every
    drop lands while messages are in flight. Pure: the soak asks ``due(seen)`` and does the I/O.
    """

    def __init__(self, count: int, total: int, *, seed: int | None = None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ChaosConfigurationError(f"connection drops must be an integer >= 0, not {count!r}")
        if total < 0:
            raise ChaosConfigurationError(f"total deliveries must be >= 0, not {total}")
        rng = random.Random(seed)
        step = total / (count + 1)
        self.points = sorted(
            max(1, int(step * (i + 1) + rng.uniform(-step / 4, step / 4))) for i in range(count)
        ) if total else []
        self._next = 0

    @property
    def remaining(self) -> int:
        """Drops not yet due."""
        return len(self.points) - self._next

    def due(self, seen: int) -> bool:
        """True (once per drop) when ``seen`` deliveries reach the next drop point."""
        if self._next < len(self.points) and seen >= self.points[self._next]:
            self._next += 1
            return True
        return False
