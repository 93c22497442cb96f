"""One three-node RabbitMQ cluster of throwaway nodes for the whole session (DESIGN §11).

It is started by the first test that needs it (about 20 s on an idle two-core machine) and
destroyed after the last; a test that killed a node leaves it down, and the ``cluster``
fixture brings it back before the next test. The shared broker is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import names
from support.cluster import Cluster
from support.rabbitnode import rabbitmq_installed


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[Cluster]:
    """The session's cluster, started once."""
    if not rabbitmq_installed():
        pytest.fail("cluster tests start three RabbitMQ nodes: install rabbitmq-server",
                    pytrace=False)
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def _all_running(cluster: Cluster) -> Cluster:
    for node in cluster.nodes:
        if not node.running:
            node.start()
    return cluster


@pytest.fixture
def cluster(cluster_session: Cluster) -> Cluster:
    """The session's cluster with every node running (one a previous test killed restarts)."""
    return _all_running(cluster_session)


_VHOST_TESTS = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Count the tests that take a vhost, to make them all in one go; put the tests that leave
    a node down last (the next test would wait for it to boot again: seconds of CPU)."""
    config.stash[_VHOST_TESTS] = sum("vhost" in getattr(item, "fixturenames", ())
                                     for item in items if item.get_closest_marker("cluster"))
    items.sort(key=lambda item: item.get_closest_marker("leaves_a_node_down") is not None)


@pytest.fixture(scope="session")
def vhost_pool(cluster_session: Cluster, pytestconfig: pytest.Config) -> list[str]:
    """A vhost for each test that takes one, made at once (one rabbitmqctl call for all)."""
    made = [names.unique() for _ in range(max(1, pytestconfig.stash.get(_VHOST_TESTS, 1)))]
    cluster_session.add_vhosts(made)
    return made


@pytest.fixture
def vhost(cluster: Cluster, vhost_pool: list[str]) -> str:
    """A vhost of this test's own on the cluster.

    It is not deleted: the cluster goes at the session's end with all it holds, and deleting
    quorum queues while one of their members is down waits on it (15 s and more).
    """
    if vhost_pool:
        return vhost_pool.pop()
    name = names.unique()
    cluster.add_vhosts([name])
    return name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the node-loss tests' counts (confirmed, handled, duplicates, lost)."""
    from cluster.test_node_loss import REPORTED

    if REPORTED:
        terminalreporter.section("cluster node-loss counts")
        for line in REPORTED:
            terminalreporter.write_line(line)
