"""Transactional outbox and idempotent inbox on PostgreSQL (extra ``outbox``).

``Outbox.publish(session, events)`` stores messages in the application's own transaction;
``OutboxRelay`` publishes them after commit. ``idempotent(sessions)`` makes a handler run at
most once per message id. See docs/outbox.md.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ModuleNotFoundError as error:  # the extra is not installed: say how to get it
    from eventyard.errors import ConfigurationError

    raise ConfigurationError(
        f"eventyard.outbox needs {error.name or 'SQLAlchemy'}: install eventyard[outbox] "
        "(pip install 'eventyard[outbox]')"
    ) from error

from eventyard.outbox.inbox import current_session, idempotent, purge_inbox
from eventyard.outbox.relay import OutboxRelay, RelaySettings
from eventyard.outbox.schema import apply_schema, apply_schema_async, schema_sql
from eventyard.outbox.store import Outbox, pending_count

__all__ = [
    "Outbox",
    "OutboxRelay",
    "RelaySettings",
    "apply_schema",
    "apply_schema_async",
    "current_session",
    "idempotent",
    "pending_count",
    "purge_inbox",
    "schema_sql",
]
