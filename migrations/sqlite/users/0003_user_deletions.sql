-- Tombstones of deleted accounts (SQLite dialect of migrations/users/0003_user_deletions.sql;
-- see there). Times as in 0001: RFC 3339 text in UTC with microseconds.

CREATE TABLE user_deletions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL,
    deleted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;
