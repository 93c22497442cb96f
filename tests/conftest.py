"""Fixtures every test directory shares: the test broker, unique names, throwaway nodes.

RabbitMQ tests never skip: if no broker answers and none can be started, they fail with a
message that says how to get one (DESIGN §10).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from support.broker import URL_ENV, Inspector, RabbitBroker, configured_url, probe
from support.rabbitnode import ThrowawayNode, rabbitmq_installed


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitBroker]:
    """The test broker: ``EVENTYARD_TEST_AMQP_URL``, localhost, or a throwaway node."""
    url = configured_url()
    problem = probe(url)
    if problem is None:
        ctl_ok = shutil.which("rabbitmqctl") is not None
        yield RabbitBroker(url, Inspector(url, ctl_env=None if ctl_ok else dict(os.environ)))
        return
    if os.environ.get(URL_ENV) or not rabbitmq_installed():
        pytest.fail(
            f"RabbitMQ tests need a broker and none answers at {url.split('@')[-1]} ({problem}). "
            f"Start one (`rabbitmq-server -detached`, or `docker run -p 5672:5672 rabbitmq:3`) "
            f"or point {URL_ENV} at one, e.g. amqp://guest:guest@host:5672/.",
            pytrace=False,
        )
    node = ThrowawayNode()
    try:
        node.start()
        yield RabbitBroker(node.url, Inspector(node.url, ctl_env=node.env(),
                                               nodename=node.nodename), node)
    finally:
        node.destroy()


@pytest.fixture
def org() -> str:
    """An organisation name no other test or run uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def throwaway_node() -> Iterator[ThrowawayNode]:
    """A RabbitMQ node of this test's own, to stop, restart or cut off."""
    if not rabbitmq_installed():
        pytest.fail("fault tests start their own RabbitMQ node: install rabbitmq-server",
                    pytrace=False)
    node = ThrowawayNode()
    try:
        node.start()
        yield node
    finally:
        node.destroy()
