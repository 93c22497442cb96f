"""Soak reports: what the consumers told a soak, and the count by message id per subscriber."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from eventyard import naming
from eventyard.soak_probes import SoakProbe

SERVICE = "soak"  # the service name of a soak of one service


@dataclass(frozen=True, slots=True)
class SubscriberReport:
    """What happened to one subscriber's messages, counted by message id.

    ``handled + dead_lettered - handled_and_dead_lettered + lost + pending == published``:
    at-least-once delivery may run a message again after a dropped ack, so one copy can be
    handled while another runs out of retries. ``service`` consumes the queue; ``publisher``
    names the service whose event it is when that is another one (None for the store).
    """

    queue: str
    protected: bool
    published: int
    handled: int
    duplicates: int
    retried: int
    dead_lettered: int
    handled_and_dead_lettered: int
    lost: int
    pending: int
    unexpected: int
    chaos_nacks: int
    chaos_failures: int
    observed_dead_lettered: int
    service: str = SERVICE
    handler: str = ""
    publisher: str | None = None
    store: bool = False

    @property
    def ok(self) -> bool:
        """Every published message handled or dead-lettered, nothing left over or unknown."""
        return self.lost == 0 and self.pending == 0 and self.unexpected == 0


@dataclass(frozen=True, slots=True)
class ServiceReport:
    """One service of the soak: what it published, and its consumer's subscribers summed up.

    ``emitted`` counts the events the service published; the other counts add up those of the
    subscribers its consumer runs (its own, the other services' events it follows, the store),
    so ``published`` is what they should receive, as in ``SubscriberReport``.
    """

    service: str
    emitted: int
    subscribers: int
    published: int
    handled: int
    duplicates: int
    retried: int
    dead_lettered: int
    handled_and_dead_lettered: int
    lost: int
    pending: int
    unexpected: int
    chaos_nacks: int
    chaos_failures: int
    drops_requested: int
    drops_done: int

    @property
    def ok(self) -> bool:
        """Every subscriber of the service accounted for every message."""
        return self.lost == 0 and self.pending == 0 and self.unexpected == 0


@dataclass(frozen=True, slots=True)
class SoakReport:
    """The result of a soak; ``ok`` is the verdict.

    ``service`` is the soaked service (``soak``), or the fleet's services joined by commas;
    ``services`` has one entry per service, ``subscribers`` one per subscriber queue.
    """

    organization: str
    service: str
    events: int
    protected_events: int
    settings: dict[str, Any]
    drops_requested: int
    drops_done: int
    quiet: bool
    seconds: float
    kept: bool
    subscribers: list[SubscriberReport] = field(default_factory=list)
    services: list[ServiceReport] = field(default_factory=list)
    store_queue: str | None = None

    @property
    def lost(self) -> int:
        """Messages lost over every subscriber (must be 0)."""
        return sum(s.lost for s in self.subscribers)

    @property
    def ok(self) -> bool:
        """The broker went quiet and every subscriber accounted for every message."""
        return self.quiet and all(s.ok for s in self.subscribers)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = asdict(self)
        data["subscribers"] = [{**asdict(s), "ok": s.ok} for s in self.subscribers]
        data["services"] = [{**asdict(s), "ok": s.ok} for s in self.services]
        data["lost"] = self.lost
        data["ok"] = self.ok
        return data



@dataclass(slots=True)
class Tally:
    """What the consumer told us about one queue, and which messages it should receive."""

    service: str
    handler: str
    publisher: str | None
    protected: bool
    store: bool
    published: set[str] = field(default_factory=set)
    handled: Counter[str] = field(default_factory=Counter)
    observed_dead: set[str] = field(default_factory=set)
    retried: int = 0
    chaos_nacks: int = 0
    chaos_failures: int = 0

    def receives(self, service: str, protected: bool) -> bool:
        """True if an event ``service`` publishes (protected or not) comes to this queue."""
        if self.store:
            return True
        return (self.publisher or self.service) == service and self.protected == protected

    def settled_by_observers(self) -> bool:
        return self.published <= (self.handled.keys() | self.observed_dead)




def all_settled(tallies: dict[str, Tally]) -> bool:
    return all(t.settled_by_observers() for t in tallies.values())


async def broker_settled(probe: SoakProbe, tallies: dict[str, Tally]) -> bool:
    for queue in tallies:
        if await probe.ready_count(queue) or await probe.ready_count(naming.retry_queue(queue)):
            return False
    for queue, tally in tallies.items():
        dead = set(await probe.message_ids(naming.dead_letter_queue(queue)))
        if not tally.published <= (tally.handled.keys() | dead):
            return False
    return True


async def subscriber_report(probe: SoakProbe, queue: str, tally: Tally) -> SubscriberReport:
    """Count one queue by message id: the consumer's account and what the broker holds."""
    dead = set(await probe.message_ids(naming.dead_letter_queue(queue)))
    pending = set(await probe.message_ids(queue)) | set(
        await probe.message_ids(naming.retry_queue(queue)))
    handled = set(tally.handled)
    accounted = handled | dead
    return SubscriberReport(
        queue=queue, protected=tally.protected, published=len(tally.published),
        handled=len(handled), duplicates=sum(1 for n in tally.handled.values() if n > 1),
        retried=tally.retried, dead_lettered=len(dead),
        handled_and_dead_lettered=len(handled & dead),
        lost=len(tally.published - accounted - pending),
        pending=len(pending & tally.published - accounted),
        unexpected=len((accounted | pending) - tally.published),
        chaos_nacks=tally.chaos_nacks, chaos_failures=tally.chaos_failures,
        observed_dead_lettered=len(tally.observed_dead), service=tally.service,
        handler=tally.handler, publisher=tally.publisher, store=tally.store)

