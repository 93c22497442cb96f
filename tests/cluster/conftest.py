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


@pytest.fixture
def vhost(cluster: Cluster) -> Iterator[str]:
    """A vhost of this test's own on the cluster, deleted at the end.

    A node the test killed is started again first: the next test needs it anyway, and
    deleting quorum queues while one of their members is down waits on it (15 s and more).
    """
    name = names.unique()
    node = cluster.alive()[0]
    node.ctl("add_vhost", name)
    node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    _all_running(cluster).seed.ctl("delete_vhost", name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the node-loss tests' counts (confirmed, handled, duplicates, lost)."""
    from cluster.test_node_loss import REPORTED

    if REPORTED:
        terminalreporter.section("cluster node-loss counts")
        for line in REPORTED:
            terminalreporter.write_line(line)
