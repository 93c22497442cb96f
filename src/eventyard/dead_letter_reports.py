"""Dead-letter reports: what a requeue or discard run did with each dead letter, in order, and
what a dead-letter queue holds (``QueueSummary``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from eventyard.dead_letters import DeadLetter
from eventyard.display import printable

StepOutcome = Literal["requeued", "would_requeue", "skipped", "failed", "discarded"]


@dataclass(frozen=True, slots=True)
class Step:
    """What happened to one dead letter."""

    queue: str
    message_id: str | None
    type: str | None
    outcome: StepOutcome
    detail: str = ""
    id: str = ""
    size: int = 0
    problem: str | None = None

    @property
    def undecodable(self) -> bool:
        """True when the message's body is undecodable (``problem`` says why)."""
        return self.problem is not None

    @classmethod
    def of(cls, letter: DeadLetter, outcome: StepOutcome, detail: str = "") -> Step:
        """The step ``outcome`` for ``letter``."""
        return cls(letter.queue, letter.message_id, letter.type, outcome, detail, letter.id,
                   letter.size, letter.problem)


@dataclass(slots=True)
class Report:
    """Every step of a requeue or discard run, in order, and the asked-for ids not found."""

    dry_run: bool = False
    steps: list[Step] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def count(self, outcome: StepOutcome) -> int:
        """How many steps ended with ``outcome``."""
        return sum(1 for s in self.steps if s.outcome == outcome)

    @property
    def failed(self) -> list[Step]:
        """The dead letters that could not be moved (they stayed in their queue)."""
        return [s for s in self.steps if s.outcome == "failed"]

    @property
    def undecodable(self) -> list[Step]:
        """Undecodable messages requeued, or that would be (their subscriber will fail again)."""
        return [s for s in self.steps if s.undecodable and s.outcome in ("requeued", "would_requeue")]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"dry_run": self.dry_run,
                "counts": {o: self.count(o) for o in ("requeued", "would_requeue", "skipped",
                                                      "failed", "discarded")},
                "not_found": list(self.not_found),
                "steps": [{"queue": s.queue, "id": s.id, "message_id": s.message_id, "type": s.type,
                           "outcome": s.outcome, "detail": s.detail, "size": s.size,
                           "undecodable": s.undecodable, "problem": s.problem}
                          for s in self.steps]}


StepCallback = Callable[[Step], None]


@dataclass(frozen=True, slots=True)
class Group:
    """Dead letters of one queue with the same message type, error and decodability."""

    type: str
    error: str
    undecodable: bool
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """A dead-letter queue: its count and how many of each (message type, failure type)."""

    queue: str
    exists: bool
    count: int
    groups: tuple[Group, ...] = ()
    inspected: int = 0

    @property
    def undecodable(self) -> int:
        """How many inspected messages are undecodable."""
        return sum(g.count for g in self.groups if g.undecodable)


class Summarizing:
    """Builds a ``QueueSummary`` from letters added as they are read (a large queue is never
    held in memory)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.counts: Counter[tuple[str, str, bool]] = Counter()
        self.sizes: Counter[tuple[str, str, bool]] = Counter()
        self.inspected = 0

    def add(self, letter: DeadLetter) -> None:
        """Count ``letter`` in its group."""
        key = (letter.type or "?", printable(letter.failure.type or "?"), letter.undecodable)
        self.counts[key] += 1
        self.sizes[key] += letter.size
        self.inspected += 1

    def summary(self, count: int) -> QueueSummary:
        """The summary of the queue, which holds ``count`` messages."""
        groups = tuple(Group(t, e, u, n, self.sizes[(t, e, u)])
                       for (t, e, u), n in self.counts.most_common())
        return QueueSummary(self.queue, True, count, groups, self.inspected)
