"""What a test session left on the broker: its holdings at the start and at the end, compared.

Only names the session can own are compared, because other runs share the broker at the same
time (see ``nothing_left_on_the_broker`` in tests/conftest.py for the rules and why).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from support.broker import Inspector

# Names the seed's code hardcodes (and so do tests that run it): they belong in a vhost of the
# test's own, never on a shared one.
SEED_NAME = re.compile(r"^(retry\.|dead_letter\.)?(acme|alice|globex)(\.|$)"
                       r"|^(retry\.|dead_letter\.)?store(_globex)?$")


@dataclass(frozen=True)
class Holdings:
    """The broker's vhosts and users, and the queues and exchanges of some of its vhosts."""

    vhosts: frozenset[str]
    users: frozenset[str]
    queues: dict[str, frozenset[str]]  # vhost -> names
    exchanges: dict[str, frozenset[str]]


def _ctl(inspector: Inspector, *args: str) -> Any:
    command = ["rabbitmqctl", "-q", *(["-n", inspector.nodename] if inspector.nodename else []),
               *args, "--formatter", "json"]
    result = subprocess.run(command, env=inspector.ctl_env, check=True, capture_output=True,
                            text=True, timeout=60)
    return json.loads(result.stdout or "[]")


def holdings(inspector: Inspector, vhosts: Iterable[str]) -> Holdings:
    """What the broker of ``inspector`` holds now, looking into ``vhosts``."""
    management = inspector.management
    if management is not None:
        all_vhosts, users = management.vhosts(), management.users()
    else:
        all_vhosts = {row["name"] for row in _ctl(inspector, "list_vhosts", "name")}
        users = {row["user"] for row in _ctl(inspector, "list_users")}
    queues: dict[str, frozenset[str]] = {}
    exchanges: dict[str, frozenset[str]] = {}
    for vhost in sorted(set(vhosts) & all_vhosts):
        url = _url_of_vhost(inspector.url, vhost)
        on_vhost = inspector.at(url)
        queues[vhost] = frozenset(on_vhost.queues())
        exchanges[vhost] = frozenset(on_vhost.exchanges())
    return Holdings(frozenset(all_vhosts), frozenset(users), queues, exchanges)


def _url_of_vhost(url: str, vhost: str) -> str:
    path = "/" if vhost == "/" else "/" + quote(vhost, safe="")
    return urlunsplit(urlsplit(url)._replace(path=path))


def left_behind(before: Holdings, after: Holdings, tokens: frozenset[str],
                dedicated: frozenset[str]) -> list[str]:
    """What ``after`` holds that ``before`` did not and this session made.

    Ours: a name containing one of ``tokens`` (names the session made up), a seed name (see
    ``SEED_NAME``), or any new name at all in a vhost of ``dedicated`` (vhosts no other run uses).
    """

    def ours(name: str, vhost: str | None) -> bool:
        return (any(token in name for token in tokens) or bool(SEED_NAME.search(name))
                or vhost in dedicated)

    found = [f"vhost {name!r}" for name in sorted(after.vhosts - before.vhosts)
             if any(token in name for token in tokens)]
    found += [f"user {name!r}" for name in sorted(after.users - before.users)
              if any(token in name for token in tokens)]
    for kind, old, new in (("queue", before.queues, after.queues),
                           ("exchange", before.exchanges, after.exchanges)):
        for vhost, names in sorted(new.items()):
            added = names - old.get(vhost, frozenset())
            found += [f"{kind} {name!r} on vhost {vhost!r}" for name in sorted(added)
                      if ours(name, vhost)]
    return found


def wait_for_clean(look: Callable[[], list[str]], timeout: float = 5.0) -> list[str]:
    """``look()`` until it finds nothing or ``timeout`` passes; what it found last.

    A queue deleted with its connection (exclusive, auto-delete) goes a moment after the test
    that made it has ended: leftovers are what is still there after that moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = look()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)  # polling the broker with a deadline


def to_wire(found: Holdings) -> dict[str, Any]:
    """``found`` as plain lists and dicts (what an xdist worker can send its controller)."""
    return {"vhosts": sorted(found.vhosts), "users": sorted(found.users),
            "queues": {vhost: sorted(names) for vhost, names in found.queues.items()},
            "exchanges": {vhost: sorted(names) for vhost, names in found.exchanges.items()}}


def from_wire(sent: dict[str, Any]) -> Holdings:
    """The ``Holdings`` that ``to_wire`` wrote."""
    return Holdings(frozenset(sent["vhosts"]), frozenset(sent["users"]),
                    {vhost: frozenset(names) for vhost, names in sent["queues"].items()},
                    {vhost: frozenset(names) for vhost, names in sent["exchanges"].items()})


def common(snapshots: Iterable[Holdings]) -> Holdings:
    """What every one of ``snapshots`` holds: the broker before the earliest of them, as far as
    names this session may make are concerned (each worker of a parallel run takes its own)."""
    taken = list(snapshots)

    def per_vhost(kind: Callable[[Holdings], dict[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
        vhosts = {vhost for snapshot in taken for vhost in kind(snapshot)}
        return {vhost: frozenset.intersection(*(kind(s).get(vhost, frozenset()) for s in taken))
                for vhost in vhosts}

    return Holdings(frozenset.intersection(*(s.vhosts for s in taken)),
                    frozenset.intersection(*(s.users for s in taken)),
                    per_vhost(lambda s: s.queues), per_vhost(lambda s: s.exchanges))
