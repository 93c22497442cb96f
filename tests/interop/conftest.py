"""Fixtures for petisco 2.2.3 beside eventyard on the default vhost ``/`` of the test broker.

petisco connects to ``/`` only, so these tests run there (not in a vhost of their own). Every
name they declare contains the test's unique organisation, and the fixture deletes all of them
afterwards; the store (``store``, a name petisco fixes for the whole vhost) is left out here:
petisco with ``use_store_queues=False``, eventyard with ``store=False``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eventyard.topology import TopologyOptions
from interop.sides import PetiscoService, YardService, url_of_vhost
from support.broker import Inspector, RabbitBroker

pytestmark = pytest.mark.rabbitmq


@dataclass
class Interop:
    """One petisco service and eventyard services of the same organisation and name on ``/``."""

    url: str
    inspector: Inspector
    organization: str
    service: str
    petisco: PetiscoService
    _yards: list[YardService] = field(default_factory=list)

    def yard(self, options: TopologyOptions, service: str | None = None) -> YardService:
        """An eventyard service (own connector) with ``options``, closed after the test; by
        default of the same name as the petisco service."""
        service = YardService(self.url, self.organization, service or self.service, options)
        self._yards.append(service)
        return service

    def queue(self, handler: str, kind: str = "event", name: str = "user_created") -> str:
        """The subscriber queue both petisco and eventyard name for ``handler``."""
        return f"{self.organization}.{self.service}.1.{kind}.{name}.{handler}"

    def requeue(self, dead_letter_queue: str, *flags: str) -> str:
        """Run ``eventyard-rabbitmq --requeue`` on ``dead_letter_queue``; its output."""
        command = Path(sys.executable).parent / "eventyard-rabbitmq"
        done = subprocess.run([str(command), "--requeue", "-o", self.organization, "-s",
                               self.service, "-cq", dead_letter_queue, "--url", self.url, *flags],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def close(self) -> None:
        try:
            self.petisco.close()
        finally:
            for yard in self._yards:
                yard.close()


@pytest.fixture
def interop(rabbit: RabbitBroker, org: str) -> Iterator[Interop]:
    """petisco and eventyard on ``/`` for a unique organisation and service; cleaned up after."""
    url = url_of_vhost(rabbit.url, "/")
    inspector = rabbit.inspector.at(url)
    service = f"s{uuid.uuid4().hex[:8]}"
    world = Interop(url, inspector, org, service, PetiscoService(url, org, service))
    try:
        yield world
    finally:
        try:
            world.close()
        finally:
            inspector.delete_matching(org)
