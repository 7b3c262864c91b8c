-- Membership over time and deleted accounts (SQLite dialect of
-- migrations/chat/0005_membership.sql; see there).

ALTER TABLE outbox ADD COLUMN user_id INTEGER;

CREATE TABLE user_deletions_applied (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_deletion INTEGER NOT NULL
);

INSERT INTO user_deletions_applied (id, last_deletion) VALUES (1, 0);

-- deleted_at in microseconds since the epoch.
CREATE TABLE deleted_users (
    user_id    INTEGER PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);
