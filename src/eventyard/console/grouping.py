"""Dead letters grouped as the console shows them: by queue, message type and failure."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventyard.rabbitmq.dead_letters import DeadLetter

_FRAME = re.compile(r'File "(?P<file>[^"]*)", line (?P<line>\d+), in (?P<function>\S+)')


def failure_frame(stack: str | None) -> str:
    """The frame that raised: ``file.py:12 in handler`` (the innermost one of a Python stack)."""
    frames = _FRAME.findall(stack or "")
    if not frames:
        return "-"
    file, line, function = frames[-1]
    return f"{Path(file).name}:{line} in {function}"


@dataclass(slots=True)
class Group:
    """Dead letters of one queue with one message type and one failure (exception + frame)."""

    queue: str
    type: str
    exception: str
    frame: str
    letters: list[DeadLetter] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A stable id for the URL."""
        text = "\x00".join((self.queue, self.type, self.exception, self.frame))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def oldest(self) -> str:
        """The earliest first failure."""
        return min((x.failure.first_at or "" for x in self.letters), default="") or "-"

    @property
    def newest(self) -> str:
        """The latest last failure."""
        return max((x.failure.last_at or "" for x in self.letters), default="") or "-"


def group_letters(letters: Sequence[DeadLetter]) -> list[Group]:
    """Letters grouped by queue, message type and failure, largest group first."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    for letter in letters:
        label = letter.type or "?"
        if letter.undecodable:
            label += " (undecodable)"
        key = (letter.queue, label, letter.failure.type or "-", failure_frame(letter.failure.stack))
        groups.setdefault(key, Group(*key)).letters.append(letter)
    return sorted(groups.values(), key=lambda g: (-len(g.letters), g.queue, g.type))


@dataclass(slots=True)
class Snapshot:
    """What the queues hold now."""

    queues: list[str]
    groups: list[Group]
    note: str = ""

    def group(self, key: str) -> Group | None:
        """The group with this key, if any."""
        return next((g for g in self.groups if g.key == key), None)
