"""A three-node RabbitMQ cluster of throwaway nodes, for fail-over and quorum-queue tests.

Each node is a ``ThrowawayNode`` (own node name, ports, data and log folders) given one Erlang
cookie and the list of its peers (RabbitMQ's ``classic_config`` peer discovery): the first
node, the seed, boots alone, then the others boot at once and join it as they boot, with no
``rabbitmqctl`` (each call of it boots an Erlang VM of its own). Nodes run on one scheduler
without busy-waiting, so three of them fit a two-core machine beside other work. Start takes
about 20 s, twice that on a busy machine; never the shared broker.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.rabbitnode import SERVER, ThrowawayNode, port_open

# One scheduler and no spinning: an idle node then costs next to no CPU, and three boot at
# once on two cores. Nothing here is about throughput.
SMALL_VM = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none +A 4"


class ClusterNode(ThrowawayNode):
    """A throwaway node that shares ``cookie`` with its cluster and can be killed outright."""

    def __init__(self, cookie: str, base: Path | None = None) -> None:
        super().__init__(base)
        cookie_file = self.base / "home" / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read

    def env(self) -> dict[str, str]:
        """The throwaway node's environment, with a small VM."""
        env = super().env()
        env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = SMALL_VM
        env["RABBITMQ_CTL_ERL_ARGS"] = "+S 1:1 +sbwt none"
        return env

    def discover(self, peers: list[str]) -> None:
        """Join the cluster of ``peers`` (node names) when first booted."""
        with open(self.base / "rabbitmq.conf", "a") as conf:
            conf.write("cluster_formation.peer_discovery_backend = classic_config\n")
            conf.writelines(f"cluster_formation.classic_config.nodes.{index} = {peer}\n"
                            for index, peer in enumerate(peers, 1))

    def launch(self) -> None:
        """Start the node without waiting for it (``start()`` then waits for its port)."""
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen([SERVER], env=self.env(), stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until the node accepts AMQP connections (its listener opens last)."""
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process is None or self.process.poll() is not None or (
                    time.monotonic() > deadline):
                output = (self.base / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"cluster node {self.nodename} did not start:\n{output}")
            time.sleep(0.05)  # polling a port with a deadline

    def wait_closed(self, timeout: float = 30.0) -> None:
        """Wait until the node's AMQP port no longer accepts connections."""
        deadline = time.monotonic() + timeout
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {self.nodename} still listens after {timeout}s")
            time.sleep(0.05)  # polling a port with a deadline

    @property
    def running(self) -> bool:
        """True while the node's server process lives."""
        return self.process is not None and self.process.poll() is None

    def beam_pid(self) -> int:
        """The Erlang VM's process id (the node writes it to its pid file when it boots)."""
        return int((self.base / "rabbit.pid").read_text().strip())

    def kill(self) -> None:
        """``kill -9`` the node's Erlang VM: no goodbye to clients or peers."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        if self.process is not None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


class Cluster:
    """Three ``ClusterNode`` s joined into one RabbitMQ cluster."""

    def __init__(self, size: int = 3, base: Path | None = None) -> None:
        cookie = secrets.token_hex(16).upper()
        self.nodes = [ClusterNode(cookie, base / f"node{i}" if base else None)
                      for i in range(size)]
        for node in self.nodes:
            node.discover([peer.nodename for peer in self.nodes])

    @property
    def seed(self) -> ClusterNode:
        """The node the others join."""
        return self.nodes[0]

    @property
    def url(self) -> str:
        """One AMQP URL naming every node, each with its own port, in node order."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/"

    def node_on_port(self, port: int) -> ClusterNode:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        """Boot the seed, then the others at once: each joins the seed as it boots (were all
        three to boot at once, two could each find no peer up and form clusters of their own)."""
        self.seed.launch()
        self.seed.wait_ready()
        joiners = self.nodes[1:]
        for node in joiners:
            node.launch()
        for node in joiners:
            node.wait_ready()  # a node opens its AMQP port after it has joined
        members = self.running_nodes()
        if set(members) != {node.nodename for node in self.nodes}:
            raise RuntimeError(f"cluster formed with {members}, not all {len(self.nodes)} nodes")

    def running_nodes(self, via: ClusterNode | None = None) -> list[str]:
        """The cluster's running members as ``via`` (the seed by default) sees them."""
        out = (via or self.seed).eval("rabbit_nodes:all_running()")
        return [name.strip(" '\n") for name in out.strip().strip("[]").split(",") if name.strip()]

    def add_vhosts(self, names: list[str], user: str = "guest") -> None:
        """Create the vhosts ``names`` and give ``user`` every permission on them, in one
        ``rabbitmqctl import_definitions`` (each call boots an Erlang VM)."""
        node = self.alive()[0]
        definitions = node.base / f"vhosts-{names[0]}.json"
        definitions.write_text(json.dumps({
            "vhosts": [{"name": name} for name in names],
            "permissions": [{"user": user, "vhost": name, "configure": ".*", "write": ".*",
                             "read": ".*"} for name in names],
        }))
        node.ctl("import_definitions", str(definitions))

    def alive(self) -> list[ClusterNode]:
        """Nodes whose server runs."""
        return [node for node in self.nodes if node.running]

    def destroy(self) -> None:
        """Stop every node at once and remove their files."""
        for node in self.nodes:
            if node.running and node.process is not None:
                node.process.send_signal(signal.SIGTERM)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.destroy(), self.nodes))
