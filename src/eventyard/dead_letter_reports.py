"""Dead-letter reports: what a requeue or discard run did with each dead letter, in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from eventyard.dead_letters import DeadLetter

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
