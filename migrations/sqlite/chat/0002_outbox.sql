-- The transactional outbox of the chat service's events (SQLite dialect of
-- migrations/chat/0002_outbox.sql; see there). Times are microseconds since the epoch.

CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id       INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    claimed_until INTEGER
);

CREATE INDEX outbox_created_idx ON outbox (created_at);
