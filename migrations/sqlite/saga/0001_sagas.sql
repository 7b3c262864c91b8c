-- The orchestrator's saga log: the SQLite dialect of migrations/saga/0001_sagas.sql (see
-- there for what the tables mean), with the same tables, columns, constraints and indexes.
--
-- Times are TEXT in one fixed form, RFC 3339 in UTC with microseconds
-- ('2024-05-01T12:00:00.123456Z'), so that comparing two as text (lease expiry, step
-- order) compares them as times. The store writes them that way; the defaults produce the
-- same form. UUIDs are their 16 bytes as a BLOB, as sqlx encodes them.

CREATE TABLE sagas (
    id              BLOB NOT NULL PRIMARY KEY,
    -- The authenticated caller who started it; idempotency keys are per caller.
    initiator_id    INTEGER NOT NULL,
    idempotency_key TEXT,
    chat_id         INTEGER NOT NULL,
    -- `from` as given (email or username).
    sender          TEXT NOT NULL,
    text            TEXT NOT NULL,
    sender_id       INTEGER,
    message_seq     INTEGER,
    state           TEXT NOT NULL
                    CHECK (state IN ('running', 'completed', 'compensating', 'compensated', 'failed')),
    error           TEXT NOT NULL DEFAULT '',
    -- The gRPC code a failed saga answers with (invalid_argument, not_found, ...).
    error_code      TEXT NOT NULL DEFAULT '',
    lease_until     TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;

CREATE UNIQUE INDEX sagas_idempotency ON sagas (initiator_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sagas_unfinished ON sagas (lease_until)
    WHERE state IN ('running', 'compensating');

CREATE TABLE saga_steps (
    saga_id     BLOB NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL
                CHECK (kind IN ('resolve_sender', 'store_message', 'notify', 'compensate')),
    state       TEXT NOT NULL CHECK (state IN ('started', 'succeeded', 'failed')),
    -- When the step first started; a resumed step keeps it (the notify deadline counts
    -- from here).
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    finished_at TEXT,
    error       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (saga_id, kind)
) STRICT;
