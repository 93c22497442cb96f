"""Vhosts, users, permissions and connections on the test broker: through its management API
when it has one (milliseconds), else rabbitmqctl (a second or two a call)."""

from __future__ import annotations

import subprocess
import time

from support.broker import Inspector


class Admin:
    """Adds and deletes vhosts and users on the node of ``inspector``."""

    def __init__(self, inspector: Inspector) -> None:
        self._management = inspector.management
        self._ctl_env = inspector.ctl_env
        self._nodename = inspector.nodename

    def _ctl(self, *args: str) -> str:
        command = ["rabbitmqctl", "-q", *(["-n", self._nodename] if self._nodename else []), *args]
        return subprocess.run(command, env=self._ctl_env, check=True, capture_output=True,
                              text=True, timeout=60).stdout

    def add_vhost(self, name: str) -> None:
        """Create the vhost ``name``."""
        if self._management is not None:
            self._management.add_vhost(name)
        else:
            self._ctl("add_vhost", name)

    def set_permissions(self, vhost: str, user: str) -> None:
        """Give ``user`` every permission on ``vhost``."""
        if self._management is not None:
            self._management.set_permissions(vhost, user)
        else:
            self._ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def add_user(self, name: str, password: str) -> None:
        """Create the user ``name`` with ``password`` (no permissions)."""
        if self._management is not None:
            self._management.add_user(name, password)
        else:
            self._ctl("add_user", name, password)

    def delete_vhost(self, name: str) -> None:
        """Delete the vhost ``name`` and all it holds."""
        if self._management is not None:
            self._management.delete_vhost(name)
        else:
            self._ctl("delete_vhost", name)

    def delete_user(self, name: str) -> None:
        """Delete the user ``name``."""
        if self._management is not None:
            self._management.delete_user(name)
        else:
            self._ctl("delete_user", name)

    def close_connection(self, connection_name: str, reason: str, timeout: float = 15.0) -> None:
        """Make the broker close the client connection named ``connection_name`` (the client's
        ``connection_name`` property) with ``reason``, as an operator would."""
        deadline = time.monotonic() + timeout
        while (found := self._connection(connection_name)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection named {connection_name!r} on the broker")
            time.sleep(0.05)  # the API lists a connection once its creation event is handled
        if self._management is not None:
            self._management.close_connection(found, reason)
        else:
            self._ctl("close_connection", found, reason)

    def _connection(self, connection_name: str) -> str | None:
        """The API's name (else rabbitmqctl's pid) of the connection called ``connection_name``."""
        if self._management is not None:
            return next((row["name"] for row in self._management.connections()
                         if (row.get("client_properties") or {}).get("connection_name")
                         == connection_name), None)
        for line in self._ctl("list_connections", "--no-table-headers", "pid",
                              "client_properties").splitlines():
            pid, _, properties = line.partition("\t")
            if f'{{"connection_name","{connection_name}"}}' in properties:
                return pid
        return None
