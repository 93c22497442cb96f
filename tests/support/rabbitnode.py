"""A throwaway RabbitMQ node for tests that stop, restart or cut off a broker.

It has its own node name, ports, data and log directories in a temp folder and never touches
the shared broker. Start takes 5 to 10 s; a stop, about 1 s; a restart of the broker in its
running VM, about 1 s.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from support.tlscerts import Pki

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def rabbitmq_installed() -> bool:
    """True when a node can be started here."""
    return os.access(SERVER, os.X_OK)


def erl_call() -> str:
    """The path of Erlang's ``erl_call`` (it comes with the runtime RabbitMQ runs on)."""
    found = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/erl_call"))
    if not found:
        raise RuntimeError("erl_call not found under /usr/lib/erlang: install erlang-base")
    return found[-1]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ThrowawayNode:
    """A RabbitMQ node of its own: ``start()``, ``stop()``, ``restart()``, ``url``."""

    def __init__(self, base: Path | None = None, *, extra_config: str = "") -> None:
        """``extra_config``: more ``rabbitmq.conf`` lines (TLS listeners, alarms' limits...)."""
        self.base = Path(base or tempfile.mkdtemp(prefix="eventyard-rabbit-"))
        suffix = uuid.uuid4().hex[:8]
        self.nodename = f"eventyard-test-{suffix}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        (self.base / "mnesia").mkdir(exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            + (extra_config.strip() + "\n" if extra_config.strip() else "")
        )
        (self.base / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/``."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        """The environment that makes rabbitmq-server and rabbitmqctl talk to this node."""
        env = dict(os.environ)
        env.update({
            "HOME": str(self.base / "home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it accepts AMQP connections.

        The AMQP listener is among the last things a node starts (after the vhosts and their
        queues), so an open port means a node ready for clients; this spares the 1 to 2 s of
        an Erlang VM that ``rabbitmqctl wait`` boots.
        """
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen([SERVER], env=self.env(), stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.base / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"throwaway RabbitMQ node did not start:\n{output}")
            time.sleep(0.05)  # polling a port with a deadline

    def stop(self) -> None:
        """Stop the node cleanly (durable queues and persistent messages survive).

        SIGTERM makes the node stop as ``rabbitmqctl stop`` does, without booting a VM for it.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, timeout: float = 60.0) -> None:
        """Restart the broker inside its running Erlang VM, as ``rabbitmqctl stop_app`` then
        ``start_app`` do: the broker closes every connection and its listener, then recovers
        durable queues and persistent messages from disk. About 1 s, where stopping and starting
        the process takes 7 (most of it the VM's boot, which is no part of what clients see)."""
        # rabbitmqctl, not eval(): through erl_call, rabbit:start() returns ok here and the
        # broker stays stopped.
        self.ctl("eval", "ok = rabbit:stop(), ok = rabbit:start().")
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"throwaway RabbitMQ node did not listen again within {timeout} s")
            time.sleep(0.05)  # polling a port with a deadline

    def eval(self, expression: str) -> str:
        """Evaluate Erlang ``expression`` on the node; return the result as Erlang prints it.

        Through ``erl_call``, a small C client of the Erlang distribution: a few milliseconds,
        where ``rabbitmqctl eval`` boots an Erlang VM of its own (half a second of CPU).
        """
        cookie = (self.base / "home" / ".erlang.cookie").read_text().strip()
        result = subprocess.run([erl_call(), "-n", self.nodename, "-c", cookie, "-e"],
                                input=expression.rstrip().rstrip(".") + ".\n", env=self.env(),
                                capture_output=True, text=True, timeout=60)
        output = result.stdout.strip()  # {ok, Result} when the expression ran
        if result.returncode != 0 or not (output.startswith("{ok,") and output.endswith("}")):
            raise RuntimeError(f"erl_call on {self.nodename} failed: {output} {result.stderr}")
        return output[len("{ok,"):-1].strip()

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node; return its output."""
        result = subprocess.run([CTL, "-n", self.nodename, *args], env=self.env(), check=True,
                                capture_output=True, text=True, timeout=60)
        return result.stdout

    def destroy(self) -> None:
        """Stop the node and remove its files."""
        try:
            self.stop()
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
            shutil.rmtree(self.base, ignore_errors=True)


@dataclass(frozen=True)
class WorkerNode:
    """A test worker's RabbitMQ node apart from the test broker: plain AMQP on ``node.port``
    and, when ``openssl`` was there to make a private CA (``pki``), mutual TLS on ``tls_port``."""

    node: ThrowawayNode
    tls_port: int
    pki: Pki | None
