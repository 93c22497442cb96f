"""Fixtures for the console tests: a console served on a free port over one test's service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from cli.conftest import Service, service  # noqa: F401 (the dead letters of one organisation)
from eventyard.console import ConsoleConfig, create_app
from eventyard.rabbitmq.settings import settings_from
from support.rabbitnode import free_port
from support.waiting import wait_until

TOKEN = "console-test-token"


@dataclass
class Served:
    """A running console and the service whose dead letters it shows."""

    url: str
    service: Service


@pytest.fixture
def console(service: Service) -> Iterator[Served]:  # noqa: F811
    """The console over ``service``'s organisation, served by uvicorn on a thread."""
    app = create_app(ConsoleConfig(settings_from(service.url), TOKEN, org=service.org))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10.0, "the console to listen")
        yield Served(f"http://127.0.0.1:{port}", service)
    finally:
        server.should_exit = True
        thread.join(10)
