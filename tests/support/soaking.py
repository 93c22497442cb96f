"""Checks shared by the memory and RabbitMQ fleet soak tests."""

from __future__ import annotations

from eventyard.soak import SoakReport


def assert_fleet_accounted_for(report: SoakReport, events: int, subscribers: int) -> None:
    """Every service and subscriber accounted for every message; the store saw the whole org."""
    protected = report.protected_events
    names = [f"soak{i + 1}" for i in range(len(report.services))]
    assert report.ok and report.quiet and report.lost == 0
    assert [s.service for s in report.services] == names
    assert report.service == ",".join(names)
    for sub in report.subscribers:
        assert sub.lost == sub.pending == sub.unexpected == 0, sub
        assert sub.handled + sub.dead_lettered - sub.handled_and_dead_lettered == sub.published, sub
    store = [s for s in report.subscribers if s.store]
    assert [(s.service, s.queue) for s in store] == [("soak1", f"store_{report.organization}")]
    assert store[0].published == len(names) * (events + protected)  # every event of every service
    for index, service in enumerate(report.services):
        mine = [s for s in report.subscribers if s.service == service.service]
        own = [s for s in mine if s.publisher is None and not s.store]
        cross = [s for s in mine if s.publisher is not None]
        assert service.emitted == events + protected
        assert len(own) == subscribers + 1 and sum(s.protected for s in own) == 1
        # service k+1 follows service k's event through service k's queues
        assert [(s.publisher, s.handler, s.published) for s in cross] == (
            [] if index == 0 else [(names[index - 1], f"cross_{service.service}", events)])
        assert all(s.queue.startswith(f"{report.organization}.{names[index - 1]}.")
                   for s in cross)
        expected = subscribers * events + protected + len(cross) * events + (
            store[0].published if index == 0 else 0)
        assert service.published == expected == sum(s.published for s in mine)
        assert service.subscribers == len(mine)
        assert service.handled == sum(s.handled for s in mine)
        assert service.duplicates == sum(s.duplicates for s in mine)
        assert service.retried == sum(s.retried for s in mine)
        assert service.dead_lettered == sum(s.dead_lettered for s in mine)
        assert service.lost == service.pending == service.unexpected == 0 and service.ok
        assert (service.handled + service.dead_lettered - service.handled_and_dead_lettered
                == service.published)
        # each consumer had its own chaos; protected keys stayed untouched everywhere
        assert service.chaos_nacks > 0 and service.chaos_failures > 0 and service.retried > 0
        assert all(s.chaos_nacks == s.chaos_failures == 0 for s in mine if s.protected)
