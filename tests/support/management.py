"""The management HTTP API of the test broker: what it holds, listed in milliseconds.

rabbitmqctl starts an Erlang VM per call (0.5 to 2 s on a busy machine); the API answers the
same questions (names, arguments, bindings, vhosts, users) at once. Message counts are not
read here: the API samples them every few seconds, so tests count over AMQP instead. The
broker needs the ``rabbitmq_management`` plugin (``make test`` enables it); without it the
inspector falls back on rabbitmqctl.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MANAGEMENT_ENV = "EVENTYARD_TEST_MANAGEMENT_URL"
DEFAULT_PORT = 15672


def _segment(name: str) -> str:
    return quote(name, safe="")


class Management:
    """A client of one broker's management API, as one user."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    @classmethod
    def for_amqp_url(cls, amqp_url: str, port: int | None = None) -> Management:
        """The API beside the broker of ``amqp_url`` (``EVENTYARD_TEST_MANAGEMENT_URL``, else
        the same host on port 15672), as the URL's user."""
        parts = urlsplit(amqp_url)
        base = os.environ.get(MANAGEMENT_ENV) if port is None else None
        if not base:
            base = f"http://{parts.hostname or 'localhost'}:{port or DEFAULT_PORT}"
        return cls(base, unquote(parts.username or "guest"), unquote(parts.password or "guest"))

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}", data=data, method=method,
            headers={"Authorization": self._authorization, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def answers(self) -> bool:
        """True when the API answers and lets this user in."""
        try:
            self._call("GET", "whoami", timeout=3.0)
        except (OSError, ValueError):
            return False
        return True

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of ``vhost``: name, type, arguments, durable."""
        return list(self._call("GET",
                               f"queues/{_segment(vhost)}?columns=name,type,arguments,durable"))

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        """Every exchange of ``vhost``: name, type, durable (the default exchange's name is "")."""
        return list(self._call("GET", f"exchanges/{_segment(vhost)}?columns=name,type,durable"))

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        """Every binding of ``vhost``: source, destination, destination_type, routing_key."""
        return list(self._call("GET", f"bindings/{_segment(vhost)}"))

    def vhosts(self) -> set[str]:
        """The names of the broker's vhosts."""
        return {row["name"] for row in self._call("GET", "vhosts?columns=name")}

    def users(self) -> set[str]:
        """The names of the broker's users."""
        return {row["name"] for row in self._call("GET", "users?columns=name")}

    def connections(self) -> list[dict[str, Any]]:
        """Every client connection: its name and client properties (``connection_name``...)."""
        return list(self._call("GET", "connections?columns=name,client_properties"))

    def close_connection(self, name: str, reason: str) -> None:
        """Make the broker close the connection ``name`` (as listed) with ``reason``."""
        request = urllib.request.Request(
            f"{self.base_url}/api/connections/{_segment(name)}", method="DELETE",
            headers={"Authorization": self._authorization, "X-Reason": reason})
        with urllib.request.urlopen(request, timeout=30.0):
            pass

    def add_vhost(self, name: str) -> None:
        """Create the vhost ``name``."""
        self._call("PUT", f"vhosts/{_segment(name)}", {})

    def set_permissions(self, vhost: str, user: str) -> None:
        """Give ``user`` every permission on ``vhost``."""
        self._call("PUT", f"permissions/{_segment(vhost)}/{_segment(user)}",
                   {"configure": ".*", "write": ".*", "read": ".*"})

    def add_user(self, name: str, password: str) -> None:
        """Create the user ``name`` (no tags, no permissions)."""
        self._call("PUT", f"users/{_segment(name)}", {"password": password, "tags": ""})

    def delete_vhost(self, name: str) -> None:
        """Delete ``name`` and everything in it (a vhost already gone is fine)."""
        self._delete(f"vhosts/{_segment(name)}")

    def delete_user(self, name: str) -> None:
        """Delete the user ``name`` (a user already gone is fine)."""
        self._delete(f"users/{_segment(name)}")

    def _delete(self, path: str) -> None:
        try:
            self._call("DELETE", path)
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
