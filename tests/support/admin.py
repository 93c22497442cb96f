"""Vhosts, users and permissions on the test broker: through its management API when it has
one (milliseconds), else rabbitmqctl (a second or two a call)."""

from __future__ import annotations

import subprocess

from support.broker import Inspector


class Admin:
    """Adds and deletes vhosts and users on the node of ``inspector``."""

    def __init__(self, inspector: Inspector) -> None:
        self._management = inspector.management
        self._ctl_env = inspector.ctl_env
        self._nodename = inspector.nodename

    def _ctl(self, *args: str) -> None:
        command = ["rabbitmqctl", "-q", *(["-n", self._nodename] if self._nodename else []), *args]
        subprocess.run(command, env=self._ctl_env, check=True, capture_output=True, text=True,
                       timeout=60)

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
