"""The chaos soak's view of the in-memory broker (see ``eventyard.soak_probes``)."""

from __future__ import annotations

from typing import Any

from eventyard.ports import Transport


class MemorySoakProbe:
    """A ``SoakProbe`` for the in-memory broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def ready_count(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        return int(self.broker.message_count(queue))

    async def message_ids(self, queue: str) -> list[str]:
        """Ids of the messages in ``queue``."""
        return [m.message_id for m in self.broker.messages(queue) if m.message_id]

    async def consumer_count(self, queue: str) -> int:
        """Always 0: a closed in-memory connection lets go of its consumers at once."""
        return 0

    async def drop(self, transport: Transport) -> None:
        """Drop the in-memory connection (it resumes at once)."""
        await transport.drop()  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Nothing to release."""
