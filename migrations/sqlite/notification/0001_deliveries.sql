-- The notifier's delivery records: the SQLite dialect of
-- migrations/notification/0001_deliveries.sql (see there for what the tables mean), with
-- the same tables, columns, constraints and indexes.
--
-- Times are TEXT in one fixed form, RFC 3339 in UTC with microseconds
-- ('2024-05-01T12:00:00.123456Z'), so that comparing two as text (lease expiry) compares
-- them as times. The store writes them that way; the defaults produce the same form.

CREATE TABLE notified_messages (
    chat_id         INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    sender_id       INTEGER NOT NULL,
    sender_username TEXT NOT NULL,
    chat_title      TEXT NOT NULL,
    text            TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    recorded_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (chat_id, seq)
) STRICT;

CREATE TABLE deliveries (
    chat_id      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    recipient_id INTEGER NOT NULL,
    email        TEXT NOT NULL,
    username     TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT NOT NULL DEFAULT '',
    -- While state = 'sending': until when the claimer owns it.
    lease_until  TEXT,
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (chat_id, seq, recipient_id),
    FOREIGN KEY (chat_id, seq) REFERENCES notified_messages (chat_id, seq) ON DELETE CASCADE
) STRICT;

-- Permanent failures, for operators: "recorded and reported, never silently dropped".
CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE state = 'failed';
