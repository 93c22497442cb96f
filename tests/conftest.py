"""Fixtures every test directory shares: the test broker, unique names, throwaway nodes, and
the end-of-session check that the tests left nothing on the broker.

RabbitMQ tests never skip: if no broker answers and none can be started, they fail with a
message that says how to get one (DESIGN §10).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from support import names, parallel
from support.broker import URL_ENV, Inspector, RabbitBroker, configured_url, inspector_for, probe
from support.leftovers import holdings, left_behind, wait_for_clean
from support.rabbitnode import ThrowawayNode, WorkerNode, free_port, rabbitmq_installed
from support.tlscerts import make_pki, openssl_available
from support.vhost import PrivateVhost

_LEFTOVERS = parallel.LeftoverCheck()  # used by the xdist controller only
# Their RabbitMQ tests run twice: on the fast paths and on aiormq's public API alone (issue 11).
BOTH_PATHS = ("tests/contract/", "tests/differential/", "tests/rabbitmq/test_faults.py",
              "tests/rabbitmq/test_chaos_soak.py")
FAST_PATHS_SWITCH = "EVENTYARD_AMQP_FAST_PATHS"
parallel.forget_terminal_size()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The tests of ``BOTH_PATHS`` once on each AMQP path (``amqp_paths``)."""
    if metafunc.definition.nodeid.startswith(BOTH_PATHS):
        metafunc.parametrize("amqp_paths", ["fast", "public"], indirect=True)


@pytest.fixture(autouse=True)
def amqp_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``public``: the test runs with the fast paths off (``EVENTYARD_AMQP_FAST_PATHS=0``, read
    at each connection, and inherited by the processes the test starts)."""
    paths = str(getattr(request, "param", "fast"))
    if paths == "public":
        monkeypatch.setenv(FAST_PATHS_SWITCH, "0")
    return paths


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Only the RabbitMQ tests run on the public path too (the memory broker has no other);
    in a parallel run, the tests of the TLS node go first, so one worker runs them all."""
    public_only = [item for item in items if _paths_of(item) == "public"
                   and item.get_closest_marker("rabbitmq") is None]
    if public_only:
        config.hook.pytest_deselected(items=public_only)
        dropped = set(public_only)
        items[:] = [item for item in items if item not in dropped]
    if parallel.is_worker(config):
        parallel.order(items)


def _paths_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("amqp_paths")


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config, report: Any) -> Iterator[Any]:
    """A report an xdist worker sends: its strings made encodable (see ``parallel.encodable``)."""
    data = yield
    return parallel.encodable(data) if parallel.is_worker(config) else data


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """An xdist worker ended: keep what it saw on the broker for the check at the end."""
    _LEFTOVERS.receive(node)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the xdist controller, once every worker has ended: the leftover check, once."""
    if _LEFTOVERS.reports and _left_behind(_LEFTOVERS.check()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEFTOVERS.found:
        terminalreporter.section("nothing_left_on_the_broker", red=True)
        terminalreporter.write_line(_left_behind(_LEFTOVERS.found))


def _left_behind(found: list[str]) -> str:
    if not found:
        return ""
    return (f"the tests left {len(found)} things on the broker: " + "; ".join(found[:50])
            + (" ..." if len(found) > 50 else ""))


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitBroker]:
    """The test broker: ``EVENTYARD_TEST_AMQP_URL``, localhost, or a throwaway node."""
    url = configured_url()
    problem = probe(url)
    if problem is None:
        yield RabbitBroker(url, inspector_for(url))
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


def _uses_the_broker(item: pytest.Item) -> bool:
    return "rabbit" in getattr(item, "fixturenames", ()) or item.get_closest_marker("rabbitmq") is not None


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_broker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the run if its tests left vhosts, users, queues or exchanges on the test broker.

    When the session holds a RabbitMQ test, the broker's vhosts and users, and the queues and
    exchanges of the test vhost (the configured URL's) and of ``/`` (where the petisco interop
    tests must run), are listed before the first test and after the last one. Other runs use
    the same broker meanwhile, so a name that appeared counts only if this session made it:

    - it contains a name from ``support.names.unique`` (organisations from ``org``, the
      contract suite's, private vhosts...), which no other run can have made;
    - it is one the seed's code hardcodes (``acme.*``, ``alice.*``, ``store``...: see
      ``leftovers.SEED_NAME``) and was absent at the start; those belong in a vhost of a
      test's own, so on a shared vhost they are a leak, whichever run made it;
    - or it is on the configured vhost when that is not ``/``: such a vhost is taken to be
      this run's alone (``make test`` with a fresh vhost), so anything new there is a leftover.

    Vhosts and users count only by the first rule. A name present at the start is never
    blamed on this session. What is found is looked for again for up to 5 s first, as a queue
    bound to a closing connection goes a moment later. In a parallel run (pytest-xdist) each
    worker lists the broker before its first test and the controller checks once, after the
    last worker has ended (``support.parallel``): workers still running make things meanwhile.
    """
    if not any(_uses_the_broker(item) for item in request.session.items):
        yield
        return
    try:
        broker: RabbitBroker = request.getfixturevalue("rabbit")
    except pytest.fail.Exception:
        yield  # the RabbitMQ tests themselves fail, saying why
        return
    inspector = broker.inspector
    vhost = inspector.vhost
    looked_at = {vhost, "/"}
    dedicated = frozenset() if vhost == "/" or broker.throwaway is not None else frozenset({vhost})
    before = holdings(inspector, looked_at)
    yield
    if broker.throwaway is not None:
        return  # the node and all it holds is destroyed with the session
    if parallel.is_worker(request.config):
        parallel.send(request.config, before, names.issued())
        return

    def look() -> list[str]:
        return left_behind(before, holdings(inspector, looked_at), names.issued(), dedicated)

    found = wait_for_clean(look)
    if found:
        pytest.fail(_left_behind(found), pytrace=False)


@pytest.fixture
def org() -> str:
    """An organisation name no other test or run uses."""
    return names.unique()


@pytest.fixture
def vhost(rabbit: RabbitBroker) -> Iterator[PrivateVhost]:
    """A vhost of this test's own on the test broker, for code whose names a test cannot choose;
    deleted afterwards with all it holds. (The cluster tests have a ``vhost`` of their own.)"""
    created = PrivateVhost(rabbit).create()
    try:
        yield created
    finally:
        created.delete()


@pytest.fixture(scope="session")
def worker_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerNode]:
    """One node for every test of this worker that restarts a broker, sets off its alarms or
    speaks TLS to it: booting a node costs about 5 s of CPU. Those tests go first in a parallel
    run (``parallel.FIRST``), so one worker runs them one after another on one node."""
    if not rabbitmq_installed():
        pytest.fail("fault and TLS tests start their own RabbitMQ node: install rabbitmq-server",
                    pytrace=False)
    pki = make_pki(tmp_path_factory.mktemp("pki")) if openssl_available() else None
    tls_port = free_port()
    node = ThrowawayNode(extra_config="" if pki is None else f"""
        listeners.ssl.default = 127.0.0.1:{tls_port}
        ssl_options.cacertfile = {pki.ca}
        ssl_options.certfile = {pki.server_cert}
        ssl_options.keyfile = {pki.server_key}
        ssl_options.verify = verify_peer
        ssl_options.fail_if_no_peer_cert = true
    """.replace("\n        ", "\n"))
    try:
        node.start()
        yield WorkerNode(node, tls_port, pki)
    finally:
        node.destroy()


@pytest.fixture
def throwaway_node(worker_node: WorkerNode) -> Iterator[ThrowawayNode]:
    """A RabbitMQ node apart from the test broker, running, to restart or set alarms off on
    (this worker's node: a test names what it declares after its own ``org``; whatever it
    did, the node is left running with RabbitMQ's default memory watermark)."""
    node = worker_node.node
    node.start()  # nothing to do unless a test stopped it
    yield node
    node.start()
    node.eval("vm_memory_monitor:set_vm_memory_high_watermark(0.4)")  # RabbitMQ's default
