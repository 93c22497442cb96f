-- eventyard's transactional outbox and idempotent inbox (PostgreSQL 12 or later).
-- Idempotent: apply it at every start, or copy it into a migration of your own.
-- The tables live in the first schema of the connection's search_path.

SELECT pg_advisory_xact_lock(hashtext('eventyard_outbox_schema'));

-- One row per message stored in a business transaction; the relay publishes pending rows
-- (sent_at IS NULL) in id order and stamps sent_at once the broker confirmed them.
CREATE TABLE IF NOT EXISTS eventyard_outbox (
    id             BIGSERIAL PRIMARY KEY,
    txid           BIGINT NOT NULL DEFAULT txid_current(),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind           TEXT NOT NULL CHECK (kind IN ('event', 'command')),
    exchange       TEXT NOT NULL,
    routing_key    TEXT NOT NULL,
    message_id     TEXT,
    message_type   TEXT,
    correlation_id TEXT,
    headers        JSONB NOT NULL DEFAULT '{}'::jsonb,
    body           BYTEA NOT NULL,
    timestamp_s    BIGINT,
    sent_at        TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS eventyard_outbox_pending
    ON eventyard_outbox (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS eventyard_outbox_sent
    ON eventyard_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wakes the relays (LISTEN eventyard_outbox) when a transaction that stored messages commits:
-- PostgreSQL delivers a notification at commit, and never for a rolled-back transaction.
CREATE OR REPLACE FUNCTION eventyard_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eventyard_outbox', '');
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'eventyard_outbox_notify'
                   AND tgrelid = 'eventyard_outbox'::regclass) THEN
        CREATE TRIGGER eventyard_outbox_notify AFTER INSERT ON eventyard_outbox
            FOR EACH STATEMENT EXECUTE FUNCTION eventyard_outbox_notify();
    END IF;
END;
$$;

-- (handler, message id) of every message an idempotent handler committed; a redelivery finds
-- its row and is acked without running the handler again. Rows older than the window go.
CREATE TABLE IF NOT EXISTS eventyard_inbox (
    handler    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, message_id)
);

CREATE INDEX IF NOT EXISTS eventyard_inbox_handled_at ON eventyard_inbox (handled_at);
